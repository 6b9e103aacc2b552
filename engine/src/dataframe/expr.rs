//! Expressions: DataFusion's `Expr` and the functions to build them.
//!
//! `col("temp").gt_eq(lit(0.0))`, `(col("temp") * lit(1.8) + lit(32.0)).alias("temp_f")`,
//! `upper(col("device"))`, `when(col("x").gt(lit(0)), lit("pos")).otherwise(lit("neg"))`.

pub use datafusion::functions::expr_fn::*;
pub use datafusion::logical_expr::{cast, col, expr::Case, ident, lit, not, try_cast, when, Expr};
