//! The local dev broker: Tansu, installed once into a known directory, started
//! per `DevStack` on 127.0.0.1 with a free port and memory storage.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flumen_kafka::{Admin, KafkaConfig, TopicSpec};

use crate::proxy::OutageProxy;
use crate::tansu::ensure_tansu;
use crate::TestkitError;

/// A Kafka-protocol broker for tests and examples. Started with
/// [`DevStack::start`]; stopped when dropped (also when a test panics).
///
/// With `FLUMEN_KAFKA_BROKERS` set, nothing is started and everything points at
/// that cluster instead.
pub struct DevStack {
    brokers: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    proxy: Option<OutageProxy>,
}

fn free_port() -> Result<u16, TestkitError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(TestkitError::io("finding a free port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(TestkitError::io("reading the free port"))
}

#[allow(unsafe_code)]
fn spawn_broker(
    bin: &Path,
    port: u16,
    advertised_port: u16,
    log: &Path,
) -> Result<Child, TestkitError> {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised_port}");
    let out = std::fs::File::create(log)
        .map_err(TestkitError::io(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(TestkitError::io("cloning the log handle"))?;
    let mut command = Command::new(bin);
    command
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the broker
        // when the thread that started it exits, so no broker outlives a killed test.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    command
        .spawn()
        .map_err(|e| TestkitError::Start(format!("spawning {}: {e}", bin.display())))
}

impl DevStack {
    /// Points at an existing cluster; starts nothing.
    pub fn connect(brokers: impl Into<String>) -> DevStack {
        DevStack {
            brokers: brokers.into(),
            child: None,
            log: None,
            proxy: None,
        }
    }

    /// Starts a broker on 127.0.0.1 with a free port and waits until it answers
    /// metadata requests; or uses `FLUMEN_KAFKA_BROKERS` when set.
    ///
    /// The broker is a child of the calling thread: start it on the thread that
    /// owns the `DevStack` (a test's own thread, or `main`).
    pub fn start() -> Result<DevStack, TestkitError> {
        if let Ok(brokers) = std::env::var("FLUMEN_KAFKA_BROKERS") {
            if !brokers.trim().is_empty() {
                return Ok(DevStack::connect(brokers));
            }
        }
        DevStack::start_local(false)
    }

    /// Starts a local broker whose clients all connect through an
    /// [`OutageProxy`] (the broker advertises the proxy's address), so a test
    /// can cut the broker off and bring it back ([`DevStack::proxy`]). Ignores
    /// `FLUMEN_KAFKA_BROKERS`: an outage needs a broker of its own.
    pub fn start_behind_proxy() -> Result<DevStack, TestkitError> {
        DevStack::start_local(true)
    }

    fn start_local(behind_proxy: bool) -> Result<DevStack, TestkitError> {
        let bin = ensure_tansu()?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let proxy = if behind_proxy {
                Some(OutageProxy::start(([127, 0, 0, 1], port).into())?)
            } else {
                None
            };
            let advertised = proxy.as_ref().map_or(port, |p| p.address().port());
            let log = std::env::temp_dir().join(format!("flumen-tansu-{port}.log"));
            let child = spawn_broker(&bin, port, advertised, &log)?;
            let mut stack = DevStack {
                brokers: format!("127.0.0.1:{advertised}"),
                child: Some(child),
                log: Some(log),
                proxy,
            };
            match stack.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(stack),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TestkitError::Start("no attempt made".into())))
    }

    fn wait_ready(&mut self, deadline: Duration) -> Result<(), TestkitError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(TestkitError::Start(format!(
                        "broker exited with {status}; log: {}",
                        self.log
                            .as_ref()
                            .map_or(String::new(), |l| l.display().to_string())
                    )));
                }
            }
            if TcpStream::connect(&self.brokers).is_ok() {
                let admin = Admin::new(&KafkaConfig::new(&self.brokers))?;
                if admin.ping(Duration::from_secs(2)).is_ok() {
                    return Ok(());
                }
            }
            if start.elapsed() > deadline {
                return Err(TestkitError::Start(format!(
                    "broker at {} did not answer within {deadline:?}",
                    self.brokers
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The proxy in front of the broker (see [`DevStack::start_behind_proxy`]).
    pub fn proxy(&self) -> Option<&OutageProxy> {
        self.proxy.as_ref()
    }

    /// `host:port` of the broker.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Whether this stack started its own broker (false with `FLUMEN_KAFKA_BROKERS`).
    pub fn is_local(&self) -> bool {
        self.child.is_some()
    }

    /// Consumer settings that suit the dev broker: Tansu's group join waits
    /// about half of `session.timeout.ms`, so a short session keeps rebalances quick.
    pub fn consumer_settings(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
        ]
    }

    /// A Kafka client configuration for this broker.
    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig::new(&self.brokers)
    }

    /// Creates a topic (explicit `retention.ms` and `cleanup.policy`) and waits until it is visible.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestkitError> {
        self.create_topic_spec(&TopicSpec::new(name, partitions))
            .await
    }

    /// Creates a topic from a full spec.
    pub async fn create_topic_spec(&self, spec: &TopicSpec) -> Result<(), TestkitError> {
        Admin::new(&self.kafka_config())?.create_topic(spec).await?;
        Ok(())
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
