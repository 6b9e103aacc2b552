//! A server run as a child process: its log file, its run directory, and the
//! ways a test ends it (stop, kill, pause).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::TestkitError;

/// A running server process. Killed when dropped.
pub(crate) struct ServerProcess {
    name: &'static str,
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

/// Runs `command` as a child that the kernel kills when the test process
/// ends, however it ends (`PR_SET_PDEATHSIG` on the process-wide spawner
/// thread, see [`spawn_on_spawner`]). Output goes to `log` (appended).
#[allow(unsafe_code)]
pub(crate) fn spawn(
    name: &'static str,
    mut command: Command,
    log: &Path,
) -> Result<ServerProcess, TestkitError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(TestkitError::io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(TestkitError::io("cloning the log handle"))?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the
        // server when the thread that started it exits.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let child = spawn_on_spawner(command).map_err(|e| TestkitError::Start {
        server: name,
        reason: format!("spawning {program}: {e}"),
        log: log.to_path_buf(),
    })?;
    Ok(ServerProcess {
        name,
        child: Mutex::new(Some(child)),
        log: log.to_path_buf(),
    })
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` on one thread that lives as long as the process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not
/// the process: a server started from a test's thread or a runtime's blocking
/// pool would be killed when that thread ends. Every server is therefore
/// forked by this one thread, which never returns.
fn spawn_on_spawner(command: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::OnceLock;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("flumen-server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The senders live in a static: never reached; park to be sure.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawned {
            eprintln!("flumen-testkit: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread did not answer"))?
}

impl ServerProcess {
    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An error for this server, pointing at its log.
    pub(crate) fn error(&self, reason: impl Into<String>) -> TestkitError {
        TestkitError::Start {
            server: self.name,
            reason: reason.into(),
            log: self.log.clone(),
        }
    }

    /// `Err` when the process has exited.
    pub(crate) fn check_alive(&self) -> Result<(), TestkitError> {
        let mut guard = self.lock();
        match guard.as_mut().map(Child::try_wait) {
            None => Err(self.error("the process was stopped")),
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(self.error(format!("the process exited with {status}"))),
            Some(Err(e)) => Err(self.error(format!("waiting for the process: {e}"))),
        }
    }

    /// Polls `ready` every 100 ms until it holds, the process exits, or
    /// `deadline` passes.
    pub(crate) fn wait_ready(
        &self,
        deadline: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Duration, TestkitError> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                return Err(self.error(format!("not ready within {deadline:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to the process (no-op once it has ended).
    pub(crate) fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY-free: kill(2) through libc's safe-to-call wrapper.
                let _ = send_signal(pid, signal);
            }
        }
    }

    /// SIGTERM, then waits up to `grace` for the process to end; SIGKILL after.
    pub(crate) fn stop(&self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            let mut guard = self.lock();
            match guard.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => {}
                _ => {
                    guard.take();
                    return;
                }
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident memory of the process, in bytes (Linux `/proc`).
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
