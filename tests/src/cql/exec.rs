//! Running parsed statements against the in-memory database, and describing
//! prepared statements (bind markers, result columns).

use std::collections::BTreeMap;

use super::parse::{CmpOp, Condition, Selector, Statement, TableName, Target, Term};
use super::store::{now_micros, now_seconds, ColumnDef, ReadRow, RowWrite, Table, TableDef};
use super::system;
use super::types::{collection_items, CqlType};

/// A bound value: set (possibly null) or not set.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A value, `None` for null.
    Set(Option<Vec<u8>>),
    /// Left unset: the column is not written.
    Unset,
}

/// Why a statement failed (maps onto protocol error codes).
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    /// 0x2000
    Syntax(String),
    /// 0x2200
    Invalid(String),
    /// 0x2400
    AlreadyExists {
        /// Keyspace.
        keyspace: String,
        /// Table (empty for a keyspace).
        table: String,
    },
}

impl ExecError {
    fn invalid(m: impl Into<String>) -> Self {
        ExecError::Invalid(m.into())
    }
}

/// Rows of a SELECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Keyspace of the table.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// Result columns.
    pub columns: Vec<(String, CqlType)>,
    /// Values.
    pub rows: ResultRows,
    /// Where the next page starts, when there is one.
    pub paging_state: Option<Vec<u8>>,
}

/// What a statement did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A write.
    Void,
    /// A SELECT.
    Rows(Rows),
    /// `USE ks`.
    SetKeyspace(String),
    /// DDL: created (`true`) or dropped, keyspace, table (`None`: the keyspace).
    SchemaChange(bool, String, Option<String>),
}

/// The bind markers and result columns of a prepared statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// Keyspace and table the statement names (empty for USE / keyspaces).
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// One (name, type) per marker.
    pub markers: Vec<(String, CqlType)>,
    /// Marker indexes of the partition key columns, in key order (empty unless all bound).
    pub pk_indexes: Vec<i16>,
    /// Result columns (SELECT only).
    pub result: Vec<(String, CqlType)>,
}

/// Per-request settings.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Bound values by marker.
    pub values: &'a [Bound],
    /// The connection's keyspace (`USE`).
    pub keyspace: Option<&'a str>,
    /// Default write timestamp (from the request), µs.
    pub timestamp: Option<i64>,
    /// Rows per page (SELECT).
    pub page_size: Option<i32>,
    /// Where to resume (SELECT).
    pub paging_state: Option<&'a [u8]>,
}

/// Schema and data.
#[derive(Debug, Clone)]
pub struct Database {
    keyspaces: BTreeMap<String, Vec<(String, String)>>,
    tables: BTreeMap<(String, String), Table>,
}

impl Default for Database {
    fn default() -> Self {
        Database::new()
    }
}

impl Database {
    /// A database with the system keyspaces the drivers read.
    pub fn new() -> Self {
        let mut db = Database {
            keyspaces: BTreeMap::new(),
            tables: BTreeMap::new(),
        };
        for def in system::tables() {
            db.keyspaces
                .entry(def.keyspace.clone())
                .or_insert_with(system::local_strategy);
            db.tables
                .insert((def.keyspace.clone(), def.name.clone()), Table::new(def));
        }
        system::fill_local(&mut db);
        let names: Vec<String> = db.keyspaces.keys().cloned().collect();
        for ks in names {
            db.publish_keyspace(&ks);
        }
        let tables: Vec<TableDef> = db.tables.values().map(|t| (*t.def).clone()).collect();
        for def in tables {
            db.publish_table(&def);
        }
        db
    }

    /// The table `keyspace.table`.
    pub fn table(&self, keyspace: &str, table: &str) -> Option<&Table> {
        self.tables.get(&(keyspace.to_string(), table.to_string()))
    }

    /// The table `keyspace.table`, for writing.
    pub fn table_mut(&mut self, keyspace: &str, table: &str) -> Option<&mut Table> {
        self.tables
            .get_mut(&(keyspace.to_string(), table.to_string()))
    }

    fn resolve<'a>(
        &self,
        name: &'a TableName,
        current: Option<&'a str>,
    ) -> Result<(String, String), ExecError> {
        let keyspace = name
            .keyspace
            .as_deref()
            .or(current)
            .ok_or_else(|| ExecError::invalid("No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename"))?;
        if !self.keyspaces.contains_key(keyspace) {
            return Err(ExecError::invalid(format!(
                "Keyspace {keyspace} does not exist"
            )));
        }
        if self.table(keyspace, &name.table).is_none() {
            return Err(ExecError::invalid(format!(
                "unconfigured table {}",
                name.table
            )));
        }
        Ok((keyspace.to_string(), name.table.clone()))
    }

    /// The keyspace, name and schema of the table a statement names.
    fn target(
        &self,
        name: &TableName,
        current: Option<&str>,
    ) -> Result<(String, String, TableDef), ExecError> {
        let (ks, table) = self.resolve(name, current)?;
        let def = self.def(&ks, &table)?;
        Ok((ks, table, def))
    }

    fn def(&self, keyspace: &str, table: &str) -> Result<TableDef, ExecError> {
        self.table(keyspace, table)
            .map(|t| (*t.def).clone())
            .ok_or_else(|| ExecError::invalid(format!("unconfigured table {table}")))
    }

    fn publish_keyspace(&mut self, keyspace: &str) {
        let replication = self.keyspaces.get(keyspace).cloned().unwrap_or_default();
        system::publish_keyspace(self, keyspace, &replication);
    }

    fn publish_table(&mut self, def: &TableDef) {
        system::publish_table(self, def);
    }

    /// Runs a statement.
    pub fn execute(&mut self, statement: &Statement, req: &Request) -> Result<Outcome, ExecError> {
        match statement {
            Statement::CreateKeyspace {
                name,
                if_not_exists,
                replication,
            } => {
                if self.keyspaces.contains_key(name) {
                    if *if_not_exists {
                        return Ok(Outcome::Void);
                    }
                    return Err(ExecError::AlreadyExists {
                        keyspace: name.clone(),
                        table: String::new(),
                    });
                }
                self.keyspaces.insert(name.clone(), replication.clone());
                self.publish_keyspace(name);
                Ok(Outcome::SchemaChange(true, name.clone(), None))
            }
            Statement::CreateTable {
                name,
                if_not_exists,
                columns,
                partition_key,
                clustering,
            } => {
                let keyspace = name
                    .keyspace
                    .as_deref()
                    .or(req.keyspace)
                    .ok_or_else(|| ExecError::invalid("No keyspace has been specified"))?
                    .to_string();
                if !self.keyspaces.contains_key(&keyspace) {
                    return Err(ExecError::invalid(format!(
                        "Keyspace {keyspace} does not exist"
                    )));
                }
                if self.table(&keyspace, &name.table).is_some() {
                    if *if_not_exists {
                        return Ok(Outcome::Void);
                    }
                    return Err(ExecError::AlreadyExists {
                        keyspace,
                        table: name.table.clone(),
                    });
                }
                let index = |c: &String| columns.iter().position(|(n, _)| n == c).unwrap_or(0);
                let def = TableDef {
                    keyspace: keyspace.clone(),
                    name: name.table.clone(),
                    columns: columns
                        .iter()
                        .map(|(n, ty)| ColumnDef {
                            name: n.clone(),
                            ty: ty.clone(),
                        })
                        .collect(),
                    partition_key: partition_key.iter().map(index).collect(),
                    clustering: clustering.iter().map(index).collect(),
                };
                self.publish_table(&def);
                self.tables
                    .insert((keyspace.clone(), name.table.clone()), Table::new(def));
                Ok(Outcome::SchemaChange(
                    true,
                    keyspace,
                    Some(name.table.clone()),
                ))
            }
            Statement::Drop {
                table,
                keyspace,
                if_exists,
                truncate,
            } => self.drop(
                table.as_ref(),
                keyspace.as_deref(),
                *if_exists,
                *truncate,
                req,
            ),
            Statement::Use(keyspace) => {
                if !self.keyspaces.contains_key(keyspace) {
                    return Err(ExecError::invalid(format!(
                        "Keyspace '{keyspace}' does not exist"
                    )));
                }
                Ok(Outcome::SetKeyspace(keyspace.clone()))
            }
            Statement::Insert {
                table,
                columns,
                values,
                using,
            } => {
                let (ks, name, def) = self.target(table, req.keyspace)?;
                let mut bound = Vec::new();
                for (column, term) in columns.iter().zip(values) {
                    let (i, col) = def.column(column).map_err(ExecError::Invalid)?;
                    bound.push((i, value_of(term, &col.ty, req)?));
                }
                let write = row_write(&def, bound, true, using_of(using, req)?)?;
                self.write(&ks, &name, write)
            }
            Statement::Update {
                table,
                using,
                set,
                conditions,
            } => {
                let (ks, name, def) = self.target(table, req.keyspace)?;
                let mut bound = Vec::new();
                for (column, term) in set {
                    let (i, col) = def.column(column).map_err(ExecError::Invalid)?;
                    if def.is_key(i) {
                        return Err(ExecError::invalid(format!(
                            "PRIMARY KEY part {column} found in SET part"
                        )));
                    }
                    bound.push((i, value_of(term, &col.ty, req)?));
                }
                for (i, v) in key_equalities(&def, conditions, req)? {
                    bound.push((i, Bound::Set(Some(v))));
                }
                let write = row_write(&def, bound, false, using_of(using, req)?)?;
                self.write(&ks, &name, write)
            }
            Statement::Delete {
                table,
                using,
                conditions,
            } => {
                let (ks, name, def) = self.target(table, req.keyspace)?;
                let keys = key_equalities(&def, conditions, req)?;
                let find = |cols: &[usize]| -> Option<Vec<Vec<u8>>> {
                    cols.iter()
                        .map(|c| keys.iter().find(|(i, _)| i == c).map(|(_, v)| v.clone()))
                        .collect()
                };
                let partition = find(&def.partition_key).ok_or_else(|| {
                    ExecError::invalid("DELETE needs the whole partition key with =")
                })?;
                let clustering = if def.clustering.is_empty() {
                    None
                } else {
                    find(&def.clustering)
                };
                let (_, ts) = using_of(using, req)?;
                if let Some(t) = self.table_mut(&ks, &name) {
                    t.delete(partition, clustering, ts);
                }
                Ok(Outcome::Void)
            }
            Statement::Select {
                table,
                selectors,
                conditions,
                limit,
            } => {
                let (ks, name) = self.resolve(table, req.keyspace)?;
                self.select(
                    &ks,
                    &name,
                    selectors.as_deref(),
                    conditions,
                    limit.as_ref(),
                    req,
                )
            }
        }
    }

    fn drop(
        &mut self,
        table: Option<&TableName>,
        keyspace: Option<&str>,
        if_exists: bool,
        truncate: bool,
        req: &Request,
    ) -> Result<Outcome, ExecError> {
        match (table, keyspace) {
            (Some(t), _) => {
                let resolved = self.resolve(t, req.keyspace);
                let (ks, name) = match resolved {
                    Ok(r) => r,
                    Err(_) if if_exists => return Ok(Outcome::Void),
                    Err(e) => return Err(e),
                };
                if truncate {
                    if let Some(t) = self.table_mut(&ks, &name) {
                        t.truncate();
                    }
                    return Ok(Outcome::Void);
                }
                self.tables.remove(&(ks.clone(), name.clone()));
                system::unpublish_table(self, &ks, &name);
                Ok(Outcome::SchemaChange(false, ks, Some(name)))
            }
            (None, Some(ks)) => {
                if self.keyspaces.remove(ks).is_none() {
                    if if_exists {
                        return Ok(Outcome::Void);
                    }
                    return Err(ExecError::invalid(format!(
                        "Cannot drop non existing keyspace '{ks}'."
                    )));
                }
                let names: Vec<(String, String)> = self
                    .tables
                    .keys()
                    .filter(|(k, _)| k == ks)
                    .cloned()
                    .collect();
                for (k, t) in names {
                    self.tables.remove(&(k.clone(), t.clone()));
                    system::unpublish_table(self, &k, &t);
                }
                system::unpublish_keyspace(self, ks);
                Ok(Outcome::SchemaChange(false, ks.to_string(), None))
            }
            (None, None) => Err(ExecError::Syntax("DROP what?".into())),
        }
    }

    fn write(&mut self, ks: &str, name: &str, write: RowWrite) -> Result<Outcome, ExecError> {
        let table = self
            .table_mut(ks, name)
            .ok_or_else(|| ExecError::invalid(format!("unconfigured table {name}")))?;
        table.write(write);
        Ok(Outcome::Void)
    }

    fn select(
        &self,
        ks: &str,
        name: &str,
        selectors: Option<&[Selector]>,
        conditions: &[Condition],
        limit: Option<&Term>,
        req: &Request,
    ) -> Result<Outcome, ExecError> {
        let Some(table) = self.table(ks, name) else {
            return Err(ExecError::invalid(format!("unconfigured table {name}")));
        };
        let def = &table.def;
        let columns = result_columns(def, selectors)?;
        // Partitions fixed by the WHERE clause, else a scan in token order.
        let keys = partition_keys(def, conditions, req)?;
        let mut rows = Vec::new();
        let mut filters = Vec::new();
        for c in conditions {
            filters.push(resolve_condition(def, c, req)?);
        }
        for row in table.read(keys.as_deref()) {
            if filters.iter().all(|f| f.matches(&row, def)) {
                rows.push(row);
            }
        }
        let limit = match limit {
            Some(term) => match value_of(term, &CqlType::Int, req)? {
                Bound::Set(Some(b)) if b.len() == 4 => {
                    i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize
                }
                _ => return Err(ExecError::invalid("LIMIT needs an int")),
            },
            None => usize::MAX,
        };
        rows.truncate(limit);
        let out: ResultRows = if selectors.is_some_and(|s| s.contains(&Selector::Count)) {
            vec![vec![Some((rows.len() as i64).to_be_bytes().to_vec())]]
        } else {
            rows.iter()
                .map(|r| project(def, selectors, r))
                .collect::<Result<_, _>>()?
        };
        let (page, paging_state) = paginate(out, req)?;
        Ok(Outcome::Rows(Rows {
            keyspace: ks.to_string(),
            table: name.to_string(),
            columns,
            rows: page,
            paging_state,
        }))
    }

    /// The bind markers and result columns of `statement`.
    pub fn describe(
        &self,
        statement: &Statement,
        current: Option<&str>,
    ) -> Result<Described, ExecError> {
        let n = statement.markers();
        let mut markers: Vec<(String, CqlType)> = vec![(String::new(), CqlType::Blob); n];
        let mut set = |term: &Term, name: String, ty: CqlType| {
            if let Term::Marker(i) = term {
                if let Some(slot) = markers.get_mut(*i) {
                    *slot = (name, ty);
                }
            }
        };
        let using = |u: &super::parse::Using, set: &mut dyn FnMut(&Term, String, CqlType)| {
            if let Some(t) = &u.ttl {
                set(t, "[ttl]".into(), CqlType::Int);
            }
            if let Some(t) = &u.timestamp {
                set(t, "[timestamp]".into(), CqlType::BigInt);
            }
        };
        let describe_conditions =
            |def: &TableDef, cs: &[Condition], set: &mut dyn FnMut(&Term, String, CqlType)| {
                for c in cs {
                    match &c.target {
                        Target::Token(_) => {
                            for t in &c.values {
                                set(t, "partition key token".into(), CqlType::BigInt);
                            }
                        }
                        Target::Column(col) => {
                            let Some(i) = def.index_of(col) else { continue };
                            let ty = def.columns[i].ty.clone();
                            if c.op == CmpOp::In && c.values.len() == 1 {
                                set(
                                    &c.values[0],
                                    format!("in({col})"),
                                    CqlType::List(Box::new(ty)),
                                );
                            } else {
                                for t in &c.values {
                                    set(t, col.clone(), ty.clone());
                                }
                            }
                        }
                    }
                }
            };
        let (keyspace, table, result, pk_terms) = match statement {
            Statement::Insert {
                table,
                columns,
                values,
                using: u,
            } => {
                let (ks, name, def) = self.target(table, current)?;
                for (c, t) in columns.iter().zip(values) {
                    let (_, col) = def.column(c).map_err(ExecError::Invalid)?;
                    set(t, c.clone(), col.ty.clone());
                }
                using(u, &mut set);
                let pk: Vec<Option<&Term>> = def
                    .partition_key
                    .iter()
                    .map(|&k| {
                        columns
                            .iter()
                            .position(|c| *c == def.columns[k].name)
                            .map(|p| &values[p])
                    })
                    .collect();
                (ks, name, Vec::new(), terms_of(pk))
            }
            Statement::Update {
                table,
                using: u,
                set: assignments,
                conditions,
            } => {
                let (ks, name, def) = self.target(table, current)?;
                using(u, &mut set);
                for (c, t) in assignments {
                    let (_, col) = def.column(c).map_err(ExecError::Invalid)?;
                    set(t, c.clone(), col.ty.clone());
                }
                describe_conditions(&def, conditions, &mut set);
                (ks, name, Vec::new(), pk_terms(&def, conditions))
            }
            Statement::Delete {
                table,
                using: u,
                conditions,
            } => {
                let (ks, name, def) = self.target(table, current)?;
                using(u, &mut set);
                describe_conditions(&def, conditions, &mut set);
                (ks, name, Vec::new(), pk_terms(&def, conditions))
            }
            Statement::Select {
                table,
                selectors,
                conditions,
                limit,
            } => {
                let (ks, name, def) = self.target(table, current)?;
                describe_conditions(&def, conditions, &mut set);
                if let Some(t) = limit {
                    set(t, "[limit]".into(), CqlType::Int);
                }
                let result = result_columns(&def, selectors.as_deref())?;
                (ks, name, result, pk_terms(&def, conditions))
            }
            _ => (String::new(), String::new(), Vec::new(), None),
        };
        let pk_indexes = pk_terms
            .map(|terms| {
                terms
                    .iter()
                    .map(|t| match t {
                        Term::Marker(i) => Some(*i as i16),
                        Term::Literal(_) => None,
                    })
                    .collect::<Option<Vec<i16>>>()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        Ok(Described {
            keyspace,
            table,
            markers,
            pk_indexes,
            result,
        })
    }
}

/// The terms bound to every partition key column, when all are.
fn terms_of(pk: Vec<Option<&Term>>) -> Option<Vec<Term>> {
    pk.into_iter().map(|t| t.cloned()).collect()
}

fn pk_terms(def: &TableDef, conditions: &[Condition]) -> Option<Vec<Term>> {
    terms_of(
        def.partition_key
            .iter()
            .map(|&k| {
                conditions.iter().find_map(|c| match &c.target {
                    Target::Column(n) if *n == def.columns[k].name && c.op == CmpOp::Eq => {
                        c.values.first()
                    }
                    _ => None,
                })
            })
            .collect(),
    )
}

fn result_columns(
    def: &TableDef,
    selectors: Option<&[Selector]>,
) -> Result<Vec<(String, CqlType)>, ExecError> {
    let Some(selectors) = selectors else {
        return Ok(def
            .select_all_order()
            .into_iter()
            .map(|i| (def.columns[i].name.clone(), def.columns[i].ty.clone()))
            .collect());
    };
    selectors
        .iter()
        .map(|s| {
            Ok(match s {
                Selector::Column(c) => {
                    let (_, col) = def.column(c).map_err(ExecError::Invalid)?;
                    (c.clone(), col.ty.clone())
                }
                Selector::Token(cs) => {
                    (format!("system.token({})", cs.join(", ")), CqlType::BigInt)
                }
                Selector::WriteTime(c) => {
                    def.column(c).map_err(ExecError::Invalid)?;
                    (format!("writetime({c})"), CqlType::BigInt)
                }
                Selector::Ttl(c) => {
                    def.column(c).map_err(ExecError::Invalid)?;
                    (format!("ttl({c})"), CqlType::Int)
                }
                Selector::Count => ("count".into(), CqlType::BigInt),
            })
        })
        .collect()
}

fn project(
    def: &TableDef,
    selectors: Option<&[Selector]>,
    row: &ReadRow,
) -> Result<Vec<Option<Vec<u8>>>, ExecError> {
    let Some(selectors) = selectors else {
        return Ok(def
            .select_all_order()
            .into_iter()
            .map(|i| row.values[i].clone())
            .collect());
    };
    selectors
        .iter()
        .map(|s| {
            let index = |c: &str| def.column(c).map(|(i, _)| i).map_err(ExecError::Invalid);
            Ok(match s {
                Selector::Column(c) => row.values[index(c)?].clone(),
                Selector::Token(_) => Some(row.token.to_be_bytes().to_vec()),
                Selector::WriteTime(c) => row.meta[index(c)?].map(|m| m.ts.to_be_bytes().to_vec()),
                Selector::Ttl(c) => row.meta[index(c)?].and_then(|m| {
                    m.expires
                        .map(|(at, _)| ((at - now_seconds()).max(0) as i32).to_be_bytes().to_vec())
                }),
                Selector::Count => None,
            })
        })
        .collect()
}

/// Result rows: one value (or null) per selected column.
type ResultRows = Vec<Vec<Option<Vec<u8>>>>;

/// The page of `rows` the request asks for, and the paging state of the next one.
fn paginate(rows: ResultRows, req: &Request) -> Result<(ResultRows, Option<Vec<u8>>), ExecError> {
    let start = match req.paging_state {
        Some(state) if state.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(state);
            u64::from_be_bytes(b) as usize
        }
        Some(_) => return Err(ExecError::invalid("invalid paging state")),
        None => 0,
    };
    let size = req
        .page_size
        .filter(|&s| s > 0)
        .map_or(usize::MAX, |s| s as usize);
    let total = rows.len();
    let page: Vec<_> = rows.into_iter().skip(start).take(size).collect();
    let next = start + page.len();
    let state = (next < total).then(|| (next as u64).to_be_bytes().to_vec());
    Ok((page, state))
}

fn bound_of(term: &Term, req: &Request) -> Result<Bound, ExecError> {
    match term {
        Term::Marker(i) => req.values.get(*i).cloned().ok_or_else(|| {
            ExecError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                i + 1,
                req.values.len()
            ))
        }),
        Term::Literal(_) => Err(ExecError::invalid("internal: literal is not bound")),
    }
}

fn value_of(term: &Term, ty: &CqlType, req: &Request) -> Result<Bound, ExecError> {
    let bound = match term {
        Term::Literal(l) => Bound::Set(ty.encode(l).map_err(ExecError::Invalid)?),
        Term::Marker(_) => bound_of(term, req)?,
    };
    if let Bound::Set(Some(bytes)) = &bound {
        ty.validate(bytes).map_err(ExecError::Invalid)?;
    }
    Ok(bound)
}

fn i64_of(bound: &Bound, what: &str) -> Result<Option<i64>, ExecError> {
    match bound {
        Bound::Set(Some(b)) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(Some(i64::from_be_bytes(a)))
        }
        Bound::Set(Some(b)) if b.len() == 4 => Ok(Some(i64::from(i32::from_be_bytes([
            b[0], b[1], b[2], b[3],
        ])))),
        Bound::Set(None) | Bound::Unset => Ok(None),
        Bound::Set(Some(_)) => Err(ExecError::invalid(format!("invalid {what}"))),
    }
}

/// (ttl seconds, write timestamp µs) of a write.
fn using_of(using: &super::parse::Using, req: &Request) -> Result<(i32, i64), ExecError> {
    let ttl = match &using.ttl {
        Some(t) => i64_of(&value_of(t, &CqlType::Int, req)?, "TTL")?.unwrap_or(0),
        None => 0,
    };
    if ttl < 0 {
        return Err(ExecError::invalid(format!(
            "A TTL must be greater or equal to 0, but was {ttl}"
        )));
    }
    let ts = match &using.timestamp {
        Some(t) => i64_of(&value_of(t, &CqlType::BigInt, req)?, "timestamp")?,
        None => None,
    };
    let ts = ts.or(req.timestamp).unwrap_or_else(now_micros);
    Ok((i32::try_from(ttl).unwrap_or(i32::MAX), ts))
}

fn row_write(
    def: &TableDef,
    bound: Vec<(usize, Bound)>,
    marker: bool,
    (ttl, ts): (i32, i64),
) -> Result<RowWrite, ExecError> {
    let key = |cols: &[usize]| -> Result<Vec<Vec<u8>>, ExecError> {
        cols.iter()
            .map(|c| match bound.iter().find(|(i, _)| i == c) {
                Some((_, Bound::Set(Some(v)))) => Ok(v.clone()),
                Some(_) => Err(ExecError::invalid(format!(
                    "Invalid null value in condition for column {}",
                    def.columns[*c].name
                ))),
                None => Err(ExecError::invalid(format!(
                    "Some primary key parts are missing: {}",
                    def.columns[*c].name
                ))),
            })
            .collect()
    };
    let partition = key(&def.partition_key)?;
    let clustering = key(&def.clustering)?;
    let cells = bound
        .iter()
        .filter(|(i, _)| !def.is_key(*i))
        .filter_map(|(i, b)| match b {
            Bound::Set(v) => Some((*i, v.clone())),
            Bound::Unset => None,
        })
        .collect();
    Ok(RowWrite {
        partition,
        clustering,
        cells,
        marker,
        ts,
        ttl,
    })
}

/// `column = value` conditions on primary key columns.
fn key_equalities(
    def: &TableDef,
    conditions: &[Condition],
    req: &Request,
) -> Result<Vec<(usize, Vec<u8>)>, ExecError> {
    let mut out = Vec::new();
    for c in conditions {
        let Target::Column(name) = &c.target else {
            return Err(ExecError::invalid("token() is only allowed in SELECT"));
        };
        let (i, col) = def.column(name).map_err(ExecError::Invalid)?;
        if !def.is_key(i) || c.op != CmpOp::Eq {
            return Err(ExecError::invalid(format!(
                "Only EQ relations on primary key columns are supported here ({name})"
            )));
        }
        match value_of(&c.values[0], &col.ty, req)? {
            Bound::Set(Some(v)) => out.push((i, v)),
            _ => {
                return Err(ExecError::invalid(format!(
                    "Invalid null value in condition for column {name}"
                )))
            }
        }
    }
    Ok(out)
}

/// The partition keys a SELECT names with `=` / `IN` on every partition key
/// column, or `None` for a scan.
fn partition_keys(
    def: &TableDef,
    conditions: &[Condition],
    req: &Request,
) -> Result<Option<Vec<Vec<Vec<u8>>>>, ExecError> {
    let mut per_column: Vec<Vec<Vec<u8>>> = Vec::new();
    for &k in &def.partition_key {
        let col = &def.columns[k];
        let Some(c) = conditions.iter().find(|c| {
            matches!(&c.target, Target::Column(n) if *n == col.name)
                && matches!(c.op, CmpOp::Eq | CmpOp::In)
        }) else {
            return Ok(None);
        };
        per_column.push(values_of_condition(c, &col.ty, req)?);
    }
    let mut keys: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    for values in per_column {
        keys = keys
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut k = prefix.clone();
                    k.push(v.clone());
                    k
                })
            })
            .collect();
    }
    Ok(Some(keys))
}

/// The values on the right of a condition (an `IN ?` list is expanded).
fn values_of_condition(
    c: &Condition,
    ty: &CqlType,
    req: &Request,
) -> Result<Vec<Vec<u8>>, ExecError> {
    let mut out = Vec::new();
    if c.op == CmpOp::In && c.values.len() == 1 && matches!(c.values[0], Term::Marker(_)) {
        if let Bound::Set(Some(list)) = bound_of(&c.values[0], req)? {
            out.extend(collection_items(&list).map_err(ExecError::Invalid)?);
        }
        return Ok(out);
    }
    for t in &c.values {
        if let Bound::Set(Some(v)) = value_of(t, ty, req)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// A WHERE condition with its values bound.
struct Filter {
    target: Option<usize>,
    op: CmpOp,
    values: Vec<Vec<u8>>,
}

fn resolve_condition(def: &TableDef, c: &Condition, req: &Request) -> Result<Filter, ExecError> {
    match &c.target {
        Target::Token(_) => Ok(Filter {
            target: None,
            op: c.op,
            values: values_of_condition(c, &CqlType::BigInt, req)?,
        }),
        Target::Column(name) => {
            let (i, col) = def.column(name).map_err(ExecError::Invalid)?;
            Ok(Filter {
                target: Some(i),
                op: c.op,
                values: values_of_condition(c, &col.ty, req)?,
            })
        }
    }
}

impl Filter {
    fn matches(&self, row: &ReadRow, def: &TableDef) -> bool {
        let (left, ty) = match self.target {
            None => (Some(row.token.to_be_bytes().to_vec()), CqlType::BigInt),
            Some(i) => (row.values[i].clone(), def.columns[i].ty.clone()),
        };
        let Some(left) = left else { return false };
        let l = ty.sort_key(&left);
        let cmp = |v: &Vec<u8>| l.cmp(&ty.sort_key(v));
        match self.op {
            CmpOp::In => self.values.iter().any(|v| cmp(v).is_eq()),
            op => self.values.first().is_some_and(|v| {
                let o = cmp(v);
                match op {
                    CmpOp::Eq => o.is_eq(),
                    CmpOp::Lt => o.is_lt(),
                    CmpOp::Le => o.is_le(),
                    CmpOp::Gt => o.is_gt(),
                    CmpOp::Ge => o.is_ge(),
                    CmpOp::In => false,
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn run(db: &mut Database, cql: &str, values: &[Bound]) -> Result<Outcome, ExecError> {
        let req = Request {
            values,
            ..Default::default()
        };
        db.execute(&parse(cql).map_err(ExecError::Syntax)?, &req)
    }

    fn text(s: &str) -> Bound {
        Bound::Set(Some(s.as_bytes().to_vec()))
    }

    fn big(v: i64) -> Bound {
        Bound::Set(Some(v.to_be_bytes().to_vec()))
    }

    #[test]
    fn ddl_writes_and_reads() {
        let mut db = Database::new();
        run(&mut db, "CREATE KEYSPACE m WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[]).unwrap();
        run(
            &mut db,
            "CREATE TABLE m.t (k text, c bigint, v text, PRIMARY KEY ((k), c))",
            &[],
        )
        .unwrap();
        let insert = "INSERT INTO m.t (k, c, v) VALUES (?, ?, ?) USING TIMESTAMP ?";
        run(&mut db, insert, &[text("a"), big(2), text("new"), big(20)]).unwrap();
        run(&mut db, insert, &[text("a"), big(2), text("old"), big(10)]).unwrap();
        run(&mut db, insert, &[text("a"), big(1), Bound::Unset, big(10)]).unwrap();
        let Outcome::Rows(rows) = run(&mut db, "SELECT c, v FROM m.t WHERE k = 'a'", &[]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            rows.rows,
            vec![
                vec![Some(1i64.to_be_bytes().to_vec()), None],
                vec![Some(2i64.to_be_bytes().to_vec()), Some(b"new".to_vec())],
            ]
        );
        // The schema is visible to drivers.
        let Outcome::Rows(cols) = run(
            &mut db,
            "SELECT column_name, kind, position, type FROM system_schema.columns WHERE keyspace_name = 'm'",
            &[],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(cols.rows.len(), 3);
        let err = run(&mut db, "SELECT nope FROM m.t", &[]).unwrap_err();
        assert!(matches!(err, ExecError::Invalid(m) if m.contains("nope")));
    }

    #[test]
    fn scans_page_in_token_order() {
        let mut db = Database::new();
        run(
            &mut db,
            "CREATE KEYSPACE m WITH replication = {'class': 'SimpleStrategy'}",
            &[],
        )
        .unwrap();
        run(
            &mut db,
            "CREATE TABLE m.t (k bigint PRIMARY KEY, v bigint)",
            &[],
        )
        .unwrap();
        for i in 0..25 {
            run(
                &mut db,
                "INSERT INTO m.t (k, v) VALUES (?, ?)",
                &[big(i), big(i * 10)],
            )
            .unwrap();
        }
        let statement = parse("SELECT k, token(k) FROM m.t").unwrap();
        let mut state: Option<Vec<u8>> = None;
        let mut tokens = Vec::new();
        loop {
            let req = Request {
                page_size: Some(10),
                paging_state: state.as_deref(),
                ..Default::default()
            };
            let Outcome::Rows(rows) = db.execute(&statement, &req).unwrap() else {
                panic!()
            };
            for r in &rows.rows {
                tokens.push(i64::from_be_bytes(
                    r[1].clone().unwrap().try_into().unwrap(),
                ));
            }
            state = rows.paging_state;
            if state.is_none() {
                break;
            }
        }
        assert_eq!(tokens.len(), 25);
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "token order");
    }

    #[test]
    fn prepared_statements_describe_their_markers() {
        let mut db = Database::new();
        run(
            &mut db,
            "CREATE KEYSPACE m WITH replication = {'class': 'SimpleStrategy'}",
            &[],
        )
        .unwrap();
        run(
            &mut db,
            "CREATE TABLE m.t (k text, c bigint, v double, PRIMARY KEY ((k), c))",
            &[],
        )
        .unwrap();
        let d = db
            .describe(
                &parse("INSERT INTO m.t (c, v, k) VALUES (?, ?, ?) USING TTL ? AND TIMESTAMP ?")
                    .unwrap(),
                None,
            )
            .unwrap();
        let names: Vec<&str> = d.markers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "v", "k", "[ttl]", "[timestamp]"]);
        assert_eq!(d.pk_indexes, [2]);
        let d = db
            .describe(
                &parse("SELECT keyspace_name, table_name FROM system_schema.tables where keyspace_name in ?").unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(d.markers[0].1, CqlType::List(Box::new(CqlType::Text)));
        assert_eq!(d.result.len(), 2);
    }
}
