//! Consumer processes for crash tests: the test binary itself, run again to execute one of its
//! ignored tests (the child's body), so a test needs nothing built beyond itself.

use std::fmt::Debug;
use std::process::{Child, Command};
use std::time::Duration;

/// A child process running one ignored test of this binary; SIGKILLed when dropped, so a
/// failing test leaves none behind.
pub struct ChildProcess(Child);

impl ChildProcess {
    /// Runs this binary's ignored test `test` alone, with `envs` set, output shown.
    pub fn spawn(test: &str, envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ]);
        command.envs(envs.iter().copied());
        Self(command.spawn().expect("start a child process"))
    }

    /// Sends the process signal `name` (`STOP`, `CONT`, `TERM`, ...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.0.id());
    }

    /// Whether the process has ended by itself (an abort, say), reaping it if so.
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }

    /// SIGKILLs the process and waits for it: no shutdown, no goodbye.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but say so in case a test left it stopped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The end of a child's body once its consumer runs: prints `label` and the consumer's stats
/// every `every`, for the test's output, until the test kills the process.
pub fn report_until_killed<T: Debug>(label: &str, every: Duration, stats: impl Fn() -> T) -> ! {
    loop {
        std::thread::sleep(every);
        eprintln!("{label}: {:?}", stats());
    }
}
