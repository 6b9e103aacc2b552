//! A single-node Apache Cassandra 5.0 run from its Maven Central jars
//! (`org.apache.cassandra.service.CassandraDaemon`), in place of the tarball's
//! `bin/cassandra`, `cassandra-env.sh` and `jvm17-server.options`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::install::{ensure_jars, java17};
use super::process::{spawn, ServerProcess};
use super::rundir::{self, free_port};
use crate::cql::TestCertificate;
use crate::TestkitError;

/// How long a start may take before it is an error (first boots take 15-40 s
/// on 2 cores shared with Kafka and a build).
const START_DEADLINE: Duration = Duration::from_secs(180);

/// The password of the generated keystore (a throwaway test certificate).
const KEYSTORE_PASSWORD: &str = "flumen-test";

/// Options of a [`CassandraServer`].
#[derive(Debug, Clone)]
pub struct CassandraOptions {
    /// Heap size (`-Xms` = `-Xmx`), e.g. `1G`.
    pub heap: String,
    /// Serve CQL over TLS only, with this certificate.
    pub tls: Option<TestCertificate>,
    /// Acknowledge a write only once its commit log entry is on disk
    /// (`commitlog_sync: batch`). The default, Cassandra's own `periodic`
    /// (every 10 s), acknowledges before: a SIGKILLed node then loses its
    /// last acknowledged writes (a test measured 6 of 2,000), which a
    /// replicated cluster covers but a single test node does not. Tests that
    /// kill the node and count rows need this.
    pub synced_commitlog: bool,
}

impl Default for CassandraOptions {
    fn default() -> Self {
        CassandraOptions {
            heap: "1G".into(),
            tls: None,
            synced_commitlog: false,
        }
    }
}

/// A Cassandra node child process on 127.0.0.1 with free ports (CQL and
/// storage; JMX off), `num_tokens: 1` and a run directory of its own. Killed,
/// and its directory removed, when dropped.
pub struct CassandraServer {
    dir: PathBuf,
    cql_port: u16,
    tls: Option<TestCertificate>,
    command: Vec<String>,
    process: Mutex<Option<ServerProcess>>,
}

impl CassandraServer {
    /// Writes the configuration and starts the node; returns once it answers
    /// `SELECT release_version FROM system.local`.
    pub fn start(options: &CassandraOptions) -> Result<CassandraServer, TestkitError> {
        let jars = ensure_jars()?.cassandra;
        let java = java17()?;
        let dir = rundir::create("cassandra")?;
        let cql_port = free_port()?;
        let storage_port = free_port()?;
        if let Some(certificate) = &options.tls {
            write_keystore(&dir, certificate)?;
        }
        write_config(&dir, (cql_port, storage_port), options)?;
        let mut command = vec![java.display().to_string()];
        command.extend(jvm_options(&dir, &jars, &options.heap));
        command.push("-cp".into());
        command.push(format!(
            "{}:{}/*",
            dir.join("conf").display(),
            jars.display()
        ));
        command.push("org.apache.cassandra.service.CassandraDaemon".into());
        let server = CassandraServer {
            dir,
            cql_port,
            tls: options.tls.clone(),
            command,
            process: Mutex::new(None),
        };
        server.launch()?;
        Ok(server)
    }

    /// `127.0.0.1:<cql port>`.
    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.cql_port)
    }

    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cassandra.log")
    }

    /// Resident memory of the node process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.lock().as_ref().and_then(ServerProcess::rss_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerProcess>> {
        self.process
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn launch(&self) -> Result<Duration, TestkitError> {
        let mut command = Command::new(&self.command[0]);
        command.args(&self.command[1..]);
        let process = spawn("cassandra", command, &self.log_path())?;
        let node = self.node();
        let tls = self.tls.clone();
        let took = process.wait_ready(START_DEADLINE, || answers(&node, tls.as_ref()))?;
        *self.lock() = Some(process);
        Ok(took)
    }

    /// Stops the node (SIGTERM; SIGKILL after 30 s).
    pub fn stop(&self) {
        if let Some(process) = self.lock().take() {
            process.stop(Duration::from_secs(30));
        }
    }

    /// Kills the node (SIGKILL): a crash. Writes acknowledged before it are in
    /// the commit log and come back on [`CassandraServer::restart`].
    pub fn kill(&self) {
        if let Some(process) = self.lock().take() {
            process.kill();
        }
    }

    /// Freezes the node (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(process) = self.lock().as_ref() {
            process.signal(libc::SIGSTOP);
        }
    }

    /// Thaws a paused node (SIGCONT).
    pub fn resume(&self) {
        if let Some(process) = self.lock().as_ref() {
            process.signal(libc::SIGCONT);
        }
    }

    /// Starts a stopped or killed node again on the same data directory and
    /// ports; returns how long it took to answer.
    pub fn restart(&self) -> Result<Duration, TestkitError> {
        self.stop();
        self.launch()
    }

    /// A driver session to this node (over TLS when the node serves TLS).
    pub async fn session(&self) -> Result<Session, TestkitError> {
        let mut builder = SessionBuilder::new().known_node(self.node());
        if let Some(certificate) = &self.tls {
            builder = builder.tls_context(Some(connector(certificate)?));
        }
        builder.build().await.map_err(|e| TestkitError::Start {
            server: "cassandra",
            reason: format!("connecting a session to {}: {e}", self.node()),
            log: self.log_path(),
        })
    }
}

impl Drop for CassandraServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the node answers `SELECT release_version FROM system.local`
/// (asked from a thread of its own: the caller may be inside a runtime; the
/// driver's logs of refused connections while the node starts are muted).
fn answers(node: &str, tls: Option<&TestCertificate>) -> bool {
    if std::net::TcpStream::connect(node).is_err() {
        return false;
    }
    let (node, tls) = (node.to_string(), tls.cloned());
    std::thread::spawn(move || {
        let quiet = tracing::subscriber::NoSubscriber::default();
        tracing::subscriber::with_default(quiet, || ask_release_version(&node, tls.as_ref()))
    })
    .join()
    .unwrap_or(false)
}

fn ask_release_version(node: &str, tls: Option<&TestCertificate>) -> bool {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    runtime.block_on(async {
        let mut builder = SessionBuilder::new()
            .known_node(node)
            .connection_timeout(Duration::from_secs(2));
        if let Some(certificate) = tls {
            match connector(certificate) {
                Ok(c) => builder = builder.tls_context(Some(c)),
                Err(_) => return false,
            }
        }
        let Ok(session) = builder.build().await else {
            return false;
        };
        session
            .query_unpaged("SELECT release_version FROM system.local", &[])
            .await
            .is_ok()
    })
}

/// A TLS client context that trusts `certificate`.
fn connector(certificate: &TestCertificate) -> Result<openssl::ssl::SslContext, TestkitError> {
    let tls_error = |e: openssl::error::ErrorStack| TestkitError::Tls(e.to_string());
    let mut builder = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(tls_error)?;
    let ca = openssl::x509::X509::from_pem(&certificate.cert_pem).map_err(tls_error)?;
    builder.cert_store_mut().add_cert(ca).map_err(tls_error)?;
    builder.set_verify(openssl::ssl::SslVerifyMode::PEER);
    Ok(builder.build())
}

fn write_keystore(dir: &Path, certificate: &TestCertificate) -> Result<(), TestkitError> {
    let tls_error = |e: openssl::error::ErrorStack| TestkitError::Tls(e.to_string());
    let key = openssl::pkey::PKey::private_key_from_pem(&certificate.key_pem).map_err(tls_error)?;
    let cert = openssl::x509::X509::from_pem(&certificate.cert_pem).map_err(tls_error)?;
    let store = openssl::pkcs12::Pkcs12::builder()
        .name("cassandra")
        .pkey(&key)
        .cert(&cert)
        .build2(KEYSTORE_PASSWORD)
        .and_then(|p| p.to_der())
        .map_err(tls_error)?;
    std::fs::create_dir_all(dir.join("conf"))
        .map_err(TestkitError::io("creating the conf directory"))?;
    let path = dir.join("conf/keystore.p12");
    std::fs::write(&path, store).map_err(TestkitError::io(format!("writing {}", path.display())))
}

fn write_config(
    dir: &Path,
    (cql_port, storage_port): (u16, u16),
    options: &CassandraOptions,
) -> Result<(), TestkitError> {
    let tls = options.tls.is_some();
    let commitlog_sync = if options.synced_commitlog {
        "commitlog_sync: batch"
    } else {
        "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms"
    };
    for sub in ["conf", "data", "logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(TestkitError::io(format!(
            "creating {}",
            dir.join(sub).display()
        )))?;
    }
    let data = dir.join("data");
    let data = data.display();
    let mut yaml = format!(
        "cluster_name: flumen-devstack
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: \"127.0.0.1:{storage_port}\"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
start_native_transport: true
native_transport_port: {cql_port}
data_file_directories:
  - {data}/data
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
{commitlog_sync}
commitlog_segment_size: 32MiB
concurrent_compactors: 1
auto_snapshot: false
"
    );
    if tls {
        yaml.push_str(&format!(
            "client_encryption_options:
  enabled: true
  optional: false
  keystore: {}
  keystore_password: {KEYSTORE_PASSWORD}
  store_type: PKCS12
  require_client_auth: false
",
            dir.join("conf/keystore.p12").display()
        ));
    }
    write(&dir.join("conf/cassandra.yaml"), &yaml)?;
    write(&dir.join("conf/logback.xml"), LOGBACK)
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
}

/// The node logs INFO and up to stdout, which goes to its log file.
const LOGBACK: &str = r#"<configuration scan="false" debug="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{1} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"#;

/// The module exports and opens of Cassandra 5.0's `jvm17-server.options`.
const JPMS: &[&str] = &[
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
];

fn jvm_options(dir: &Path, jars: &Path, heap: &str) -> Vec<String> {
    let conf = dir.join("conf");
    let tmp = dir.join("tmp");
    let mut options: Vec<String> = vec![
        format!("-Xms{heap}"),
        format!("-Xmx{heap}"),
        "-XX:+UseG1GC".into(),
        "-XX:+ParallelRefProcEnabled".into(),
        "-XX:MaxTenuringThreshold=1".into(),
        "-XX:+ExitOnOutOfMemoryError".into(),
        "-XX:+PerfDisableSharedMem".into(),
        "-Djava.net.preferIPv4Stack=true".into(),
        "-Djdk.attach.allowAttachSelf=true".into(),
        "-Dio.netty.tryReflectionSetAccessible=true".into(),
        format!(
            "-Dcassandra.config=file://{}",
            conf.join("cassandra.yaml").display()
        ),
        format!("-Dcassandra.storagedir={}", dir.join("data").display()),
        format!("-Dcassandra.logdir={}", dir.join("logs").display()),
        format!(
            "-Dlogback.configurationFile={}",
            conf.join("logback.xml").display()
        ),
        // Without it CassandraDaemon closes stdout and stderr.
        "-Dcassandra-foreground=yes".into(),
        // One node: nothing to wait for.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0".into(),
        "-Dcassandra.superuser_setup_delay_ms=0".into(),
        "-Dcassandra.libjemalloc=-".into(),
        // JNA and netty unpack native libraries here: it must allow exec.
        format!("-Djava.io.tmpdir={}", tmp.display()),
        format!("-Djna.tmpdir={}", tmp.display()),
    ];
    options.extend(JPMS.iter().map(|s| (*s).to_string()));
    if let Some(jamm) = find_jar(jars, "jamm-") {
        options.push(format!("-javaagent:{}", jamm.display()));
    }
    options
}

fn find_jar(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(prefix) && name.ends_with(".jar")).then(|| e.path())
        })
}
