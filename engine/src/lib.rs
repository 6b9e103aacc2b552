//! # flumen
//!
//! A streaming-dataframe engine over Kafka. Build a pipeline with
//! [`StreamingDataFrame`] operations (`filter`, `select`, `with_column`, `drop`,
//! `map`, `map_batches`) on frames read from [`Topic`]s, end it with `to_topic` or
//! `print`, and [`Application::run`] it. Records move as Arrow micro-batches per
//! partition; expressions are DataFusion [`Expr`](expr::Expr)s; offsets are
//! committed only after every output of the records they cover was delivered
//! (at-least-once).
//!
//! Running needs a broker, so this example only builds the pipeline (see
//! `examples/` in the repository for complete, runnable programs):
//!
//! ```
//! use arrow::datatypes::{DataType, Field, Schema};
//! use flumen::prelude::*;
//!
//! let app = Application::builder()
//!     .brokers("127.0.0.1:9092")
//!     .consumer_group("sensors")
//!     .build()?;
//! let schema = Schema::new(vec![
//!     Field::new("device", DataType::Utf8, false),
//!     Field::new("ts", DataType::Int64, false),
//!     Field::new("temp", DataType::Float64, false),
//! ]);
//! let readings = app.dataframe(
//!     Topic::json("readings")
//!         .schema(schema)
//!         .timestamp_field("ts")
//!         .on_bad_input(BadInputPolicy::dead_letter("readings-dlq")),
//! )?;
//! let warm = readings.filter(col("temp").gt_eq(lit(20.0)));
//! warm.select([col("device"), (col("temp") * lit(1.8) + lit(32.0)).alias("temp_f")])
//!     .to_topic(Topic::json("warm-f"));
//! readings.filter(col("temp").lt(lit(0.0))).to_topic(Topic::json("frozen"));
//! // app.run().await?;  -- runs until SIGINT / SIGTERM
//! # Ok::<(), flumen::Error>(())
//! ```

mod dataframe;
mod error;
pub mod lookup;
mod operators;
mod plan;
pub mod publisher;
mod records;
mod runtime;
pub mod sink;
mod state;
mod topic;
pub mod window;

/// Expressions: DataFusion's `Expr` and functions to build them.
pub mod expr {
    pub use crate::dataframe::expr::*;
}

/// Running pipelines in memory, without a broker: [`TestDriver`](testing::TestDriver).
pub mod testing {
    pub use crate::runtime::TestDriver;
    pub use flumen_kafka::RawBatch;
}

/// Record formats, metadata columns and bad-input kinds.
pub mod format {
    pub use crate::records::{
        BadInputKind, Format, FormatError, TimestampSource, KEY_COLUMN, OFFSET_COLUMN,
        PARTITION_COLUMN, TIMESTAMP_COLUMN,
    };
}

pub use dataframe::{GroupedFrame, StreamingDataFrame, WindowedFrame};
pub use error::{Error, Result};
pub use flumen_kafka::AutoOffsetReset;
pub use plan::{BatchFn, BoxError};
pub use runtime::{
    serve_metrics, Application, ApplicationBuilder, ProcessingGuarantee, Stats, StopHandle,
};
pub use sink::Sink;
pub use topic::{BadInputPolicy, Topic, DEFAULT_MAX_EVENT_TIME_AHEAD, DEFAULT_MAX_RECORD_BYTES};

/// Everything a pipeline usually needs: `use flumen::prelude::*;`.
pub mod prelude {
    pub use crate::expr::{col, lit, Expr};
    pub use crate::format::{BadInputKind, Format};
    pub use crate::window::{
        aggregate, avg, collect, count, first, last, max, mean, min, sum, LateRecords,
    };
    pub use crate::{
        Application, AutoOffsetReset, BadInputPolicy, ProcessingGuarantee, StreamingDataFrame,
        Topic,
    };
}
