//! The CQL native protocol (v4) server: connections, frames, prepared
//! statements, fault injection.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassandra_protocol::compression::Compression;
use cassandra_protocol::consistency::Consistency;
use cassandra_protocol::frame::events::{
    SchemaChange, SchemaChangeOptions, SchemaChangeTarget, SchemaChangeType,
};
use cassandra_protocol::frame::message_batch::BatchQuerySubj;
use cassandra_protocol::frame::message_error::{
    AlreadyExistsError, ErrorBody, ErrorType, UnavailableError, UnpreparedError, WriteTimeoutError,
    WriteType,
};
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, BodyResResultSetKeyspace, ColSpec, PreparedMetadata,
    ResResultBody, RowsMetadata, RowsMetadataFlags, TableSpec,
};
use cassandra_protocol::frame::message_supported::BodyResSupported;
use cassandra_protocol::frame::{Direction, Envelope, Flags, Opcode, Serialize, Version};
use cassandra_protocol::query::{QueryParams, QueryValues};
use cassandra_protocol::types::value::Value;
use cassandra_protocol::types::{CBytes, CBytesShort};
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_openssl::SslStream;

use super::exec::{Bound, Database, Described, ExecError, Outcome, Request};
use super::parse::{parse, Statement};
use super::tls::TestCertificate;
use super::types::CqlType;

/// A fault the server injects into data requests (QUERY / EXECUTE / BATCH on
/// non-system keyspaces). Connection set-up and the drivers' metadata queries
/// are never affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer correctly, after this delay.
    Latency(Duration),
    /// Answer with a WRITE_TIMEOUT error (nothing is written).
    WriteTimeout,
    /// Answer with OVERLOADED (nothing is written).
    Overloaded,
    /// Answer with UNAVAILABLE (nothing is written).
    Unavailable,
    /// Close the connection without answering (nothing is written).
    DropConnection,
    /// Answer with INVALID, an error no retry can pass (nothing is written).
    Invalid,
}

/// How long a fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// For the next `n` data requests.
    Next(u32),
    /// For every data request during this time, from now.
    For(Duration),
}

#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    remaining: Option<u32>,
    until: Option<Instant>,
}

struct Prepared {
    statement: Statement,
    described: Described,
}

#[derive(Default)]
struct Shared {
    db: Mutex<Database>,
    prepared: Mutex<HashMap<Vec<u8>, Arc<Prepared>>>,
    faults: Mutex<Vec<ActiveFault>>,
    requests: AtomicU64,
    faulted: AtomicU64,
}

impl Shared {
    /// The fault the next data request meets, if any (consuming one use).
    fn next_fault(&self) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        faults.retain(|f| f.remaining != Some(0) && f.until.is_none_or(|u| u > now));
        let active = faults.first_mut()?;
        if let Some(n) = &mut active.remaining {
            *n -= 1;
        }
        self.faulted.fetch_add(1, Ordering::Relaxed);
        Some(active.fault)
    }
}

/// A CQL native protocol v4 server over an in-memory database, for tests.
///
/// ```no_run
/// use flumen_testkit::cql::CqlTestServer;
///
/// let server = CqlTestServer::start().expect("cql server");
/// println!("connect the driver to {}", server.node());
/// ```
pub struct CqlTestServer {
    addr: SocketAddr,
    certificate: Option<TestCertificate>,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CqlTestServer {
    /// Starts a server on 127.0.0.1 with a random port.
    pub fn start() -> std::io::Result<CqlTestServer> {
        CqlTestServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a server on `addr`; it serves until dropped.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<CqlTestServer> {
        CqlTestServer::serve(addr, None)
    }

    /// Starts a server on 127.0.0.1 with a random port that speaks only TLS,
    /// with a fresh self-signed certificate for 127.0.0.1
    /// ([`certificate`](Self::certificate)).
    pub fn start_tls() -> std::io::Result<CqlTestServer> {
        let certificate = TestCertificate::self_signed().map_err(std::io::Error::other)?;
        CqlTestServer::serve(SocketAddr::from(([127, 0, 0, 1], 0)), Some(certificate))
    }

    fn serve(
        addr: SocketAddr,
        certificate: Option<TestCertificate>,
    ) -> std::io::Result<CqlTestServer> {
        let acceptor = match &certificate {
            Some(c) => Some(Arc::new(c.acceptor().map_err(std::io::Error::other)?)),
            None => None,
        };
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serve_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("cql-test-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = accept_loop(listener, serve_shared, acceptor) => {}
                        _ = rx => {}
                    }
                });
            })?;
        Ok(CqlTestServer {
            addr,
            certificate,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate it presents, when it speaks TLS.
    pub fn certificate(&self) -> Option<&TestCertificate> {
        self.certificate.as_ref()
    }

    /// `host:port`, as drivers take contact points.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// Injects `fault` into data requests for `scope`. Faults queue: the
    /// first active one applies.
    pub fn inject(&self, fault: Fault, scope: FaultScope) {
        let (remaining, until) = match scope {
            FaultScope::Next(n) => (Some(n), None),
            FaultScope::For(d) => (None, Some(Instant::now() + d)),
        };
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ActiveFault {
                fault,
                remaining,
                until,
            });
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Data requests received so far (faulted ones included).
    pub fn data_requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Data requests answered with an injected fault so far.
    pub fn faulted_requests(&self) -> u64 {
        self.shared.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for CqlTestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<SslAcceptor>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        match &tls {
            None => {
                tokio::spawn(serve_connection(stream, shared));
            }
            Some(acceptor) => {
                let acceptor = Arc::clone(acceptor);
                tokio::spawn(async move {
                    if let Some(stream) = handshake(&acceptor, stream).await {
                        serve_connection(stream, shared).await;
                    }
                });
            }
        }
    }
}

/// The server side of a TLS handshake; `None` when it fails (the client
/// sees the connection close).
async fn handshake(acceptor: &SslAcceptor, stream: TcpStream) -> Option<SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context()).ok()?;
    let mut stream = SslStream::new(ssl, stream).ok()?;
    Pin::new(&mut stream).accept().await.ok()?;
    Some(stream)
}

/// What a request handler sends to the connection's writer.
enum Reply {
    Frame(Vec<u8>),
    Close,
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let write_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            match reply {
                Reply::Frame(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Reply::Close => break,
            }
        }
        let _ = writer.shutdown().await;
    });
    let keyspace: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match Envelope::from_buffer(&buf, Compression::None) {
                Ok(parsed) => {
                    buf.drain(..parsed.envelope_len);
                    if tx.is_closed() {
                        break 'read;
                    }
                    let (shared, tx, keyspace) =
                        (Arc::clone(&shared), tx.clone(), Arc::clone(&keyspace));
                    tokio::spawn(async move {
                        let reply = handle(&shared, &keyspace, parsed.envelope).await;
                        let _ = tx.send(reply);
                    });
                }
                Err(cassandra_protocol::frame::ParseEnvelopeError::NotEnoughBytes) => break,
                Err(_) => break 'read,
            }
        }
    }
    drop(tx);
    let _ = write_task.await;
}

fn frame(req: &Envelope, opcode: Opcode, body: Vec<u8>) -> Reply {
    let envelope = Envelope::new(
        req.version,
        Direction::Response,
        Flags::empty(),
        opcode,
        req.stream_id,
        body,
        None,
        Vec::new(),
    );
    match envelope.encode_with(Compression::None) {
        Ok(bytes) => Reply::Frame(bytes),
        Err(_) => Reply::Close,
    }
}

fn error(req: &Envelope, ty: ErrorType, message: impl Into<String>) -> Reply {
    let body = ErrorBody {
        message: message.into(),
        ty,
    };
    frame(req, Opcode::Error, body.serialize_to_vec(req.version))
}

fn result(req: &Envelope, body: ResResultBody) -> Reply {
    frame(req, Opcode::Result, body.serialize_to_vec(req.version))
}

fn exec_error(req: &Envelope, e: ExecError) -> Reply {
    match e {
        ExecError::Syntax(m) => error(req, ErrorType::Syntax, m),
        ExecError::Invalid(m) => error(req, ErrorType::Invalid, m),
        ExecError::AlreadyExists { keyspace, table } => error(
            req,
            ErrorType::AlreadyExists(AlreadyExistsError {
                ks: keyspace.clone(),
                table: table.clone(),
            }),
            if table.is_empty() {
                format!("Keyspace {keyspace} already exists")
            } else {
                format!("Table {keyspace}.{table} already exists")
            },
        ),
    }
}

async fn handle(shared: &Shared, keyspace: &Mutex<Option<String>>, req: Envelope) -> Reply {
    if req.version != Version::V4 {
        return error(
            &req,
            ErrorType::Protocol,
            format!(
                "Invalid or unsupported protocol version ({:?}); supported versions are (4/v4)",
                req.version
            ),
        );
    }
    let body = match req.request_body() {
        Ok(b) => b,
        Err(e) => return error(&req, ErrorType::Protocol, format!("malformed request: {e}")),
    };
    match body {
        RequestBody::Options(_) => {
            let data = HashMap::from([
                ("CQL_VERSION".to_string(), vec!["3.4.5".to_string()]),
                ("COMPRESSION".to_string(), Vec::new()),
                ("PROTOCOL_VERSIONS".to_string(), vec!["4/v4".to_string()]),
            ]);
            frame(
                &req,
                Opcode::Supported,
                BodyResSupported { data }.serialize_to_vec(req.version),
            )
        }
        RequestBody::Startup(startup) => {
            if let Some(c) = startup.map.get("COMPRESSION") {
                return error(
                    &req,
                    ErrorType::Protocol,
                    format!("compression '{c}' is not supported by the test server"),
                );
            }
            frame(&req, Opcode::Ready, Vec::new())
        }
        RequestBody::Register(_) => frame(&req, Opcode::Ready, Vec::new()),
        RequestBody::AuthResponse(_) => error(&req, ErrorType::Protocol, "no authentication"),
        RequestBody::Prepare(prepare) => {
            let current = prepare
                .keyspace
                .clone()
                .or_else(|| keyspace.lock().unwrap_or_else(|p| p.into_inner()).clone());
            let statement = match parse(&prepare.query) {
                Ok(s) => s,
                Err(m) => return error(&req, ErrorType::Syntax, m),
            };
            let described = {
                let db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
                db.describe(&statement, current.as_deref())
            };
            let described = match described {
                Ok(d) => d,
                Err(e) => return exec_error(&req, e),
            };
            let id = prepared_id(&prepare.query, current.as_deref());
            let body = prepared_body(&id, &described);
            shared
                .prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id,
                    Arc::new(Prepared {
                        statement,
                        described,
                    }),
                );
            result(&req, body)
        }
        RequestBody::Query(query) => {
            let statement = match parse(&query.query) {
                Ok(s) => s,
                Err(m) => return error(&req, ErrorType::Syntax, m),
            };
            let params = query.query_params;
            run(shared, keyspace, &req, &statement, None, &params).await
        }
        RequestBody::Execute(execute) => {
            let id = execute.id.into_bytes().unwrap_or_default();
            let prepared = shared
                .prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            let Some(prepared) = prepared else {
                return error(
                    &req,
                    ErrorType::Unprepared(UnpreparedError {
                        id: CBytesShort::new(id),
                    }),
                    "Prepared query not found",
                );
            };
            let params = execute.query_parameters;
            run(
                shared,
                keyspace,
                &req,
                &prepared.statement,
                Some(&prepared.described),
                &params,
            )
            .await
        }
        RequestBody::Batch(batch) => {
            if let Some(reply) =
                inject(shared, &req, batch.consistency, WriteType::UnloggedBatch).await
            {
                return reply;
            }
            let current = keyspace.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut statements = Vec::new();
            for q in &batch.queries {
                let (statement, described) = match &q.subject {
                    BatchQuerySubj::PreparedId(id) => {
                        let id = id.clone().into_bytes().unwrap_or_default();
                        let found = shared
                            .prepared
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&id)
                            .cloned();
                        match found {
                            Some(p) => (p.statement.clone(), Some(p.described.clone())),
                            None => {
                                return error(
                                    &req,
                                    ErrorType::Unprepared(UnpreparedError {
                                        id: CBytesShort::new(id),
                                    }),
                                    "Prepared query not found",
                                )
                            }
                        }
                    }
                    BatchQuerySubj::QueryString(text) => match parse(text) {
                        Ok(s) => (s, None),
                        Err(m) => return error(&req, ErrorType::Syntax, m),
                    },
                };
                let values = match bound_values(Some(&q.values), described.as_ref()) {
                    Ok(v) => v,
                    Err(m) => return error(&req, ErrorType::Invalid, m),
                };
                statements.push((statement, values));
            }
            let mut db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
            for (statement, values) in &statements {
                let request = Request {
                    values,
                    keyspace: current.as_deref(),
                    timestamp: batch.timestamp,
                    page_size: None,
                    paging_state: None,
                };
                if let Err(e) = db.execute(statement, &request) {
                    return exec_error(&req, e);
                }
            }
            result(&req, ResResultBody::Void)
        }
        _ => error(&req, ErrorType::Protocol, "unsupported request"),
    }
}

/// Applies the next injected fault to a data request: `Some(reply)` answers it.
async fn inject(
    shared: &Shared,
    req: &Envelope,
    consistency: Consistency,
    write_type: WriteType,
) -> Option<Reply> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    match shared.next_fault()? {
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::WriteTimeout => Some(error(
            req,
            ErrorType::WriteTimeout(WriteTimeoutError {
                cl: consistency,
                received: 0,
                block_for: 1,
                write_type,
                contentions: None,
            }),
            "Operation timed out - received only 0 responses (injected)",
        )),
        Fault::Overloaded => Some(error(
            req,
            ErrorType::Overloaded,
            "Too many in flight requests (injected)",
        )),
        Fault::Unavailable => Some(error(
            req,
            ErrorType::Unavailable(UnavailableError {
                cl: consistency,
                required: 1,
                alive: 0,
            }),
            "Cannot achieve consistency level (injected)",
        )),
        Fault::DropConnection => Some(Reply::Close),
        Fault::Invalid => Some(error(req, ErrorType::Invalid, "Invalid request (injected)")),
    }
}

fn is_system(keyspace: &str) -> bool {
    matches!(keyspace, "system" | "system_schema")
}

fn statement_keyspace(statement: &Statement, current: Option<&str>) -> Option<String> {
    let table = match statement {
        Statement::Insert { table, .. }
        | Statement::Update { table, .. }
        | Statement::Delete { table, .. }
        | Statement::Select { table, .. } => table,
        _ => return None,
    };
    table.keyspace.clone().or_else(|| current.map(String::from))
}

async fn run(
    shared: &Shared,
    keyspace: &Mutex<Option<String>>,
    req: &Envelope,
    statement: &Statement,
    described: Option<&Described>,
    params: &QueryParams,
) -> Reply {
    let current = params
        .keyspace
        .clone()
        .or_else(|| keyspace.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let data_request =
        statement_keyspace(statement, current.as_deref()).is_some_and(|ks| !is_system(&ks));
    if data_request {
        if let Some(reply) = inject(shared, req, params.consistency, WriteType::Simple).await {
            return reply;
        }
    }
    let values = match bound_values(params.values.as_ref(), described) {
        Ok(v) => v,
        Err(m) => return error(req, ErrorType::Invalid, m),
    };
    let paging_state = params.paging_state.clone().and_then(CBytes::into_bytes);
    let request = Request {
        values: &values,
        keyspace: current.as_deref(),
        timestamp: params.timestamp,
        page_size: params.page_size,
        paging_state: paging_state.as_deref(),
    };
    let outcome = {
        let mut db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(statement, &request)
    };
    match outcome {
        Err(e) => exec_error(req, e),
        Ok(Outcome::Void) => result(req, ResResultBody::Void),
        Ok(Outcome::SetKeyspace(ks)) => {
            *keyspace.lock().unwrap_or_else(|p| p.into_inner()) = Some(ks.clone());
            result(
                req,
                ResResultBody::SetKeyspace(BodyResResultSetKeyspace { body: ks }),
            )
        }
        Ok(Outcome::SchemaChange(created, ks, table)) => {
            let change = SchemaChange {
                change_type: if created {
                    SchemaChangeType::Created
                } else {
                    SchemaChangeType::Dropped
                },
                target: if table.is_some() {
                    SchemaChangeTarget::Table
                } else {
                    SchemaChangeTarget::Keyspace
                },
                options: match table {
                    Some(t) => SchemaChangeOptions::TableType(ks, t),
                    None => SchemaChangeOptions::Keyspace(ks),
                },
            };
            result(req, ResResultBody::SchemaChange(change))
        }
        Ok(Outcome::Rows(rows)) => {
            let spec = TableSpec {
                ks_name: rows.keyspace.clone(),
                table_name: rows.table.clone(),
            };
            let metadata = rows_metadata(
                Some(spec),
                &rows.columns,
                rows.paging_state.clone().map(CBytes::new),
            );
            let count = rows.rows.len() as i32;
            let content = rows
                .rows
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|v| v.map_or_else(CBytes::new_null, CBytes::new))
                        .collect()
                })
                .collect();
            result(
                req,
                ResResultBody::Rows(BodyResResultRows {
                    metadata,
                    rows_count: count,
                    rows_content: content,
                    protocol_version: req.version,
                }),
            )
        }
    }
}

fn rows_metadata(
    spec: Option<TableSpec>,
    columns: &[(String, CqlType)],
    paging_state: Option<CBytes>,
) -> RowsMetadata {
    let mut flags = RowsMetadataFlags::empty();
    if paging_state.is_some() {
        flags |= RowsMetadataFlags::HAS_MORE_PAGES;
    }
    if columns.is_empty() {
        flags |= RowsMetadataFlags::NO_METADATA;
        return RowsMetadata {
            flags,
            columns_count: 0,
            paging_state,
            new_metadata_id: None,
            global_table_spec: None,
            col_specs: Vec::new(),
        };
    }
    flags |= RowsMetadataFlags::GLOBAL_TABLE_SPACE;
    RowsMetadata {
        flags,
        columns_count: columns.len() as i32,
        paging_state,
        new_metadata_id: None,
        global_table_spec: spec,
        col_specs: col_specs(columns),
    }
}

fn col_specs(columns: &[(String, CqlType)]) -> Vec<ColSpec> {
    columns
        .iter()
        .map(|(name, ty)| ColSpec {
            table_spec: None,
            name: name.clone(),
            col_type: ty.col_type(),
        })
        .collect()
}

fn prepared_body(id: &[u8], d: &Described) -> ResResultBody {
    let spec = (!d.table.is_empty()).then(|| TableSpec {
        ks_name: d.keyspace.clone(),
        table_name: d.table.clone(),
    });
    ResResultBody::Prepared(BodyResResultPrepared {
        id: CBytesShort::new(id.to_vec()),
        result_metadata_id: None,
        metadata: PreparedMetadata {
            pk_indexes: d.pk_indexes.clone(),
            global_table_spec: if d.markers.is_empty() {
                None
            } else {
                spec.clone()
            },
            col_specs: col_specs(&d.markers),
        },
        result_metadata: rows_metadata(spec, &d.result, None),
    })
}

fn prepared_id(query: &str, keyspace: Option<&str>) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    for salt in [0u8, 1] {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        query.hash(&mut h);
        keyspace.hash(&mut h);
        id.extend(h.finish().to_be_bytes());
    }
    id
}

/// The request's values by marker; named values are matched to marker names.
fn bound_values(
    values: Option<&QueryValues>,
    described: Option<&Described>,
) -> Result<Vec<Bound>, String> {
    let convert = |v: &Value| match v {
        Value::Some(b) => Bound::Set(Some(b.clone())),
        Value::Null => Bound::Set(None),
        Value::NotSet => Bound::Unset,
    };
    match values {
        None => Ok(Vec::new()),
        Some(QueryValues::SimpleValues(vs)) => Ok(vs.iter().map(convert).collect()),
        Some(QueryValues::NamedValues(named)) => {
            let Some(d) = described else {
                return Err("named values need a prepared statement".into());
            };
            d.markers
                .iter()
                .map(|(name, _)| {
                    named
                        .get(name)
                        .map(convert)
                        .ok_or_else(|| format!("no value for bind marker '{name}'"))
                })
                .collect()
        }
    }
}
