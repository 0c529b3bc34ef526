//! The processes the soak runs: a private Redis, and the consumers and the relay (this program
//! again, with `--role`).

use super::{Names, Random};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Longest wait for the private Redis to answer after a (re)start.
const STARTUP: Duration = Duration::from_secs(120);

/// A `redis-server` of the soak's own, on a free port, keeping an append-only file synced on
/// every write: a restart, even after SIGKILL, keeps every write it acknowledged.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("eventflow-soak-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self {
            port,
            dir,
            process: None,
        };
        redis.launch()?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start redis-server (is it installed?): {error}"))?;
        self.process = Some(child);
        // Loading the append-only file takes a while on a loaded machine.
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            let ping = redis::Client::open(self.url().as_str())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            if ping.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "the private redis-server exited ({status}); its log ends:\n{}",
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the private redis-server did not answer within {STARTUP:?}; its log ends:\n{}",
            self.log_tail()
        )
        .into())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILLs the server and starts it again on the same port and files.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One child process of the soak, and how to start it again.
struct Member {
    role: &'static str,
    name: String,
    process: Option<Child>,
}

/// Two consumer processes and a relay.
pub struct Fleet {
    run: String,
    redis_url: String,
    members: Vec<Member>,
}

impl Fleet {
    pub fn start(names: &Names, redis_url: &str) -> Result<Self> {
        let members = [("consumer", 1), ("consumer", 2), ("relay", 1)]
            .into_iter()
            .map(|(role, n)| Member {
                role,
                name: format!("{}_{role}{n}", names.run),
                process: None,
            })
            .collect();
        let mut fleet = Self {
            run: names.run.clone(),
            redis_url: redis_url.to_string(),
            members,
        };
        for index in 0..fleet.members.len() {
            fleet.launch(index)?;
        }
        Ok(fleet)
    }

    fn launch(&mut self, index: usize) -> Result<()> {
        let member = &mut self.members[index];
        let child = Command::new(std::env::current_exe()?)
            .args(["--role", member.role, "--run", &self.run])
            .args(["--redis-url", &self.redis_url, "--name", &member.name])
            .stdout(Stdio::null())
            .spawn()?;
        member.process = Some(child);
        Ok(())
    }

    /// SIGKILLs a random member; returns its name. It is started again by
    /// [`ensure_running`](Self::ensure_running).
    pub fn kill_random(&mut self, random: &mut Random) -> String {
        let index = random.below(self.members.len() as u64) as usize;
        let member = &mut self.members[index];
        if let Some(mut child) = member.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        member.name.clone()
    }

    /// Starts every member that is not running (killed, or died on its own; the latter is
    /// reported).
    pub fn ensure_running(&mut self) -> Result<usize> {
        let mut started = 0;
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            let running = match member.process.as_mut() {
                Some(child) => match child.try_wait()? {
                    None => true,
                    Some(status) => {
                        eprintln!("soak: {} exited on its own: {status}", member.name);
                        false
                    }
                },
                None => false,
            };
            if !running {
                self.launch(index)?;
                started += 1;
            }
        }
        Ok(started)
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}
