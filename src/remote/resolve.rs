//! Name look-ups by a deadline.
//!
//! The system resolver (`getaddrinfo`) can block for as long as its own timeouts and
//! retries allow (`resolv.conf`: 5 s per server and try, so 30 s and more), outside any
//! deadline of ours. [`lookup`] runs a look-up on a thread of its own and waits for it
//! only until the request's deadline; an address (`127.0.0.1:9000`, `[::1]:6379`) needs
//! no look-up and gets none. A look-up that runs past the deadline is left to finish on
//! its thread, which then ends: after three such failures the tier's breaker stops
//! asking, so they stay few.
//!
//! The S3 tier's HTTP client resolves through [`Bounded`], which takes the deadline of
//! the call in progress on its thread ([`within`]); the Redis tier calls [`lookup`].

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Instant;

/// A look-up of `host:port`: the system resolver's, or a test's.
pub type Lookup = fn(&str) -> io::Result<Vec<SocketAddr>>;

/// The system resolver.
pub fn system(netloc: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(netloc.to_socket_addrs()?.collect())
}

/// The addresses of `netloc` (`host:port`) by `deadline`: at once for an address, else
/// from `with` on a thread of its own, waited for until the deadline (then an error of
/// kind `TimedOut` that names the host).
pub fn lookup(netloc: &str, deadline: Instant, with: Lookup) -> io::Result<Vec<SocketAddr>> {
    if let Ok(a) = netloc.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("looking up {netloc}: no answer by the request's deadline"),
        )
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    let (tx, rx) = mpsc::channel();
    let name = netloc.to_string();
    std::thread::Builder::new()
        .name("xcache-lookup".into())
        .spawn(move || {
            let _ = tx.send(with(&name));
        })?;
    match rx.recv_timeout(left) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(timed_out()),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(format!(
            "looking up {netloc}: the look-up ended without an answer"
        ))),
    }
}

thread_local! {
    /// The deadline of the call this thread is making ([`within`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Bounds the look-ups made on this thread by `deadline` until the guard is dropped
/// (around an HTTP call).
pub fn within(deadline: Instant) -> Within {
    Within {
        before: DEADLINE.with(|d| d.replace(Some(deadline))),
    }
}

/// While alive, look-ups on its thread are bounded by its deadline ([`within`]).
#[derive(Debug)]
pub struct Within {
    before: Option<Instant>,
}

impl Drop for Within {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.before));
    }
}

/// A resolver for ureq that looks up by the deadline of the call in progress on its
/// thread ([`within`]); outside one, as the system does.
#[derive(Debug, Clone, Copy)]
pub struct Bounded(pub Lookup);

impl ureq::Resolver for Bounded {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        match DEADLINE.with(Cell::get) {
            Some(deadline) => lookup(netloc, deadline, self.0),
            None => (self.0)(netloc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn never_answers(_: &str) -> io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(Vec::new())
    }

    fn answers(netloc: &str) -> io::Result<Vec<SocketAddr>> {
        assert_eq!(netloc, "s3.example:9000");
        Ok(vec!["192.0.2.7:9000".parse().unwrap()])
    }

    #[test]
    fn a_look_up_that_hangs_ends_at_the_deadline() {
        let start = Instant::now();
        let e = lookup(
            "s3.example:9000",
            start + Duration::from_millis(50),
            never_answers,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("s3.example:9000"), "{e}");
        // A deadline already past asks nobody.
        let e = lookup("s3.example:9000", Instant::now(), never_answers).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn addresses_are_not_looked_up_and_names_are() {
        let far = Instant::now() + Duration::from_secs(60);
        for a in ["127.0.0.1:9000", "[::1]:6379"] {
            assert_eq!(
                lookup(a, far, never_answers).unwrap(),
                vec![a.parse().unwrap()]
            );
        }
        assert_eq!(
            lookup("s3.example:9000", far, answers).unwrap(),
            vec!["192.0.2.7:9000".parse().unwrap()]
        );
    }

    #[test]
    fn ureqs_resolver_takes_the_deadline_of_the_call_on_its_thread() {
        use ureq::Resolver;
        let r = Bounded(never_answers);
        let e = {
            let _w = within(Instant::now() + Duration::from_millis(30));
            r.resolve("s3.example:9000").unwrap_err()
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // An HTTP call through an agent with it fails by the deadline, as a look-up.
        let agent = ureq::AgentBuilder::new().resolver(r).build();
        let t = Instant::now();
        let err = {
            let _w = within(t + Duration::from_millis(30));
            agent.get("http://s3.example:9000/b").call().unwrap_err()
        };
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        match err {
            ureq::Error::Transport(t) => assert_eq!(t.kind(), ureq::ErrorKind::Dns, "{t}"),
            other => panic!("{other:?}"),
        }
    }
}
