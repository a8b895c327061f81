//! Keeping secrets out of core files. Every spyctl process may hold the master
//! key or keys derived from it, and a core file is a copy of its memory written
//! to disk (often to a world-readable place, or collected by a crash reporter).
//! So before anything else, [`disable`] sets the core-file limit to zero
//! (setrlimit(2) RLIMIT_CORE, soft and hard, so a child cannot raise it again)
//! and, on Linux, marks the process not dumpable (prctl(2) PR_SET_DUMPABLE 0),
//! which also stops a `core_pattern` pipe helper and ptrace by other users.
//! Both go through `rustix`, since this crate forbids `unsafe`.

use std::fmt;

/// Which of the two steps failed, with the OS's error.
#[derive(Debug)]
pub enum CoreDumpError {
    Limit(rustix::io::Errno),
    #[cfg(target_os = "linux")]
    Dumpable(rustix::io::Errno),
}

impl fmt::Display for CoreDumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreDumpError::Limit(_) => f.write_str("cannot set the core file size limit to 0"),
            #[cfg(target_os = "linux")]
            CoreDumpError::Dumpable(_) => f.write_str("cannot mark the process as not dumpable"),
        }
    }
}

impl std::error::Error for CoreDumpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CoreDumpError::Limit(e) => Some(e),
            #[cfg(target_os = "linux")]
            CoreDumpError::Dumpable(e) => Some(e),
        }
    }
}

/// Turns core dumps off for this process (and, through the hard limit, for
/// its children). Lowering a limit is always permitted, so a failure means a
/// sandbox refused the call: the caller stops rather than hold keys in a
/// process that could still dump them.
pub fn disable() -> Result<(), CoreDumpError> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }).map_err(CoreDumpError::Limit)?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(CoreDumpError::Dumpable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn after_disable_the_core_limit_is_zero() {
        super::disable().expect("disable core dumps");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::process::dumpable_behavior().expect("PR_GET_DUMPABLE"),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
