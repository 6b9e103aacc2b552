//! A single-node Apache Kafka (KRaft, broker and controller in one process)
//! run from its Maven Central jars.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use flumen_kafka::{Admin, KafkaConfig};

use super::install::{ensure_jars, java17};
use super::process::{spawn, ServerProcess};
use super::rundir::{self, free_port};
use crate::TestkitError;

/// Any 16-byte base64url UUID; fixed, so a restart reuses the formatted log dir.
const CLUSTER_ID: &str = "flumenDevStackKafka01w";

/// How long a start may take before it is an error (2 cores shared with a
/// Cassandra node and a build: the broker is usually ready in 5-10 s).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// Options of a [`KafkaServer`].
#[derive(Debug, Clone, Default)]
pub struct KafkaOptions {
    /// The port clients are told to connect to, when it is not the broker's
    /// own (a proxy in front of it, see [`crate::OutageProxy`]).
    pub advertised_port: Option<u16>,
    /// Extra `server.properties` lines (`key=value`).
    pub extra_properties: Vec<(String, String)>,
}

/// The ports a broker listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    /// Clients (the `PLAINTEXT` listener).
    client: u16,
    /// The broker talking to itself (`INTERNAL`), never behind a proxy.
    internal: u16,
    /// The KRaft controller.
    controller: u16,
    /// What clients are told (`advertised.listeners`).
    advertised: u16,
}

/// A Kafka broker child process on 127.0.0.1 with free ports and a run
/// directory of its own. Killed, and its directory removed, when dropped.
pub struct KafkaServer {
    dir: PathBuf,
    ports: Ports,
    java: PathBuf,
    jars: PathBuf,
    process: Mutex<Option<ServerProcess>>,
}

impl KafkaServer {
    /// Writes the configuration, formats the log directory and starts the
    /// broker; returns once it answers a metadata request.
    pub fn start(options: &KafkaOptions) -> Result<KafkaServer, TestkitError> {
        let jars = ensure_jars()?.kafka;
        let java = java17()?;
        let dir = rundir::create("kafka")?;
        let client = free_port()?;
        let ports = Ports {
            client,
            internal: free_port()?,
            controller: free_port()?,
            advertised: options.advertised_port.unwrap_or(client),
        };
        write_config(&dir, ports, &options.extra_properties)?;
        format_storage(&java, &jars, &dir)?;
        let server = KafkaServer {
            dir,
            ports,
            java,
            jars,
            process: Mutex::new(None),
        };
        server.launch()?;
        Ok(server)
    }

    /// `127.0.0.1:<port>` that clients use.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports.advertised)
    }

    /// The port the broker itself listens on for clients.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    /// The run directory (configuration, data, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resident memory of the broker process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.lock().as_ref().and_then(ServerProcess::rss_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerProcess>> {
        self.process
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the broker process on the existing configuration and data and
    /// waits until it answers metadata requests.
    fn launch(&self) -> Result<Duration, TestkitError> {
        let mut command = Command::new(&self.java);
        command
            .args(jvm_options(&self.dir))
            .args(["-Xms256m", "-Xmx1g"])
            .arg("-cp")
            .arg(classpath(&self.jars))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"));
        let process = spawn("kafka", command, &self.log_path())?;
        // Readiness through the protocol, on the broker's own port.
        let own = format!("127.0.0.1:{}", self.ports.client);
        let admin = Admin::new(&KafkaConfig::new(&own))?;
        let took = process.wait_ready(START_DEADLINE, || {
            admin.ping(Duration::from_secs(2)).is_ok()
        })?;
        *self.lock() = Some(process);
        Ok(took)
    }

    /// Stops the broker (SIGTERM: a controlled shutdown; SIGKILL after 30 s).
    pub fn stop(&self) {
        if let Some(process) = self.lock().take() {
            process.stop(Duration::from_secs(30));
        }
    }

    /// Kills the broker (SIGKILL): a crash.
    pub fn kill(&self) {
        if let Some(process) = self.lock().take() {
            process.kill();
        }
    }

    /// Starts a stopped or killed broker again on the same data and ports;
    /// returns how long it took to answer.
    pub fn restart(&self) -> Result<Duration, TestkitError> {
        self.stop();
        self.launch()
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn classpath(jars: &Path) -> String {
    format!("{}/*", jars.display())
}

fn jvm_options(dir: &Path) -> Vec<String> {
    vec![
        "-server".into(),
        "-XX:+UseG1GC".into(),
        "-XX:MaxGCPauseMillis=20".into(),
        "-XX:InitiatingHeapOccupancyPercent=35".into(),
        "-XX:+ExplicitGCInvokesConcurrent".into(),
        "-Djava.awt.headless=true".into(),
        format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ),
        format!("-Dkafka.logs.dir={}", dir.join("logs").display()),
        format!("-Djava.io.tmpdir={}", dir.join("tmp").display()),
    ]
}

/// `kafka.tools.StorageTool format`: once per data directory.
fn format_storage(java: &Path, jars: &Path, dir: &Path) -> Result<(), TestkitError> {
    let output = Command::new(java)
        .args(jvm_options(dir))
        .arg("-Xmx256m")
        .arg("-cp")
        .arg(classpath(jars))
        .args([
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            CLUSTER_ID,
        ])
        .arg("--config")
        .arg(dir.join("server.properties"))
        .arg("--ignore-formatted")
        .output()
        .map_err(TestkitError::io("running kafka.tools.StorageTool"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(TestkitError::Start {
        server: "kafka",
        reason: format!(
            "formatting the log directory failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        log: dir.join("kafka.log"),
    })
}

fn write_config(dir: &Path, ports: Ports, extra: &[(String, String)]) -> Result<(), TestkitError> {
    for sub in ["data", "logs", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(TestkitError::io(format!(
            "creating {}",
            dir.join(sub).display()
        )))?;
    }
    let Ports {
        client,
        internal,
        controller,
        advertised,
    } = ports;
    let mut properties = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller}\n\
         listeners=PLAINTEXT://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{advertised},INTERNAL://127.0.0.1:{internal}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=INTERNAL\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT\n\
         log.dirs={data}\n\
         num.partitions=1\n\
         default.replication.factor=1\n\
         min.insync.replicas=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=1\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=1\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         log.segment.bytes=268435456\n",
        data = dir.join("data").display(),
    );
    for (key, value) in extra {
        properties.push_str(&format!("{key}={value}\n"));
    }
    write(&dir.join("server.properties"), &properties)?;
    write(&dir.join("log4j2.properties"), LOG4J2)
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
}

/// Broker logging: INFO to stdout (the log file), request logs quiet.
const LOG4J2: &str = "status = warn
name = flumen-devstack-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
";
