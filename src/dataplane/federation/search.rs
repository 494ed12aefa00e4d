//! The parallel search: every provider is asked at once; the first 2xx
//! wins, all 404 means nobody has it, and the deadline ends the wait.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// One provider's answer to the search's GET.
pub enum Probe<R> {
    Found(R),
    NotFound,
    Failed(String),
}

/// How the search ended. Providers are named by their index.
pub enum Outcome<R> {
    Found {
        provider: usize,
        answer: R,
    },
    /// Every provider answered 404.
    Missing,
    /// No 2xx; these failed (errors, other statuses), the rest said 404.
    Failed(Vec<(usize, String)>),
    /// The deadline came with these still unanswered (and no 2xx).
    TimedOut {
        pending: Vec<usize>,
        failed: Vec<(usize, String)>,
    },
}

pub async fn search<R, F>(probes: Vec<(usize, F)>, deadline: Duration) -> Outcome<R>
where
    F: Future<Output = Probe<R>>,
{
    let mut waiting: BTreeSet<usize> = probes.iter().map(|(i, _)| *i).collect();
    let mut running: FuturesUnordered<_> = probes
        .into_iter()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut failed = Vec::new();
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            next = running.next() => match next {
                None => break,
                Some((provider, Probe::Found(answer))) => {
                    return Outcome::Found { provider, answer }
                }
                Some((i, Probe::NotFound)) => {
                    waiting.remove(&i);
                }
                Some((i, Probe::Failed(reason))) => {
                    waiting.remove(&i);
                    failed.push((i, reason));
                }
            },
            _ = &mut timer => {
                return Outcome::TimedOut {
                    pending: waiting.into_iter().collect(),
                    failed,
                }
            }
        }
    }
    if failed.is_empty() {
        Outcome::Missing
    } else {
        Outcome::Failed(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;

    fn after(ms: u64, p: Probe<&'static str>) -> BoxFuture<'static, Probe<&'static str>> {
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            p
        }
        .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_2xx_wins_without_waiting_for_the_slow() {
        let probes = vec![
            (0, after(5, Probe::NotFound)),
            (1, after(10, Probe::Found("sp2"))),
            (2, after(10_000, Probe::Found("slow"))),
        ];
        match search(probes, Duration::from_secs(2)).await {
            Outcome::Found { provider, answer } => assert_eq!((provider, answer), (1, "sp2")),
            _ => panic!("expected a winner"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_404_is_missing_errors_fail_and_silence_times_out() {
        let none = vec![
            (0, after(1, Probe::NotFound)),
            (1, after(2, Probe::NotFound)),
        ];
        assert!(matches!(
            search(none, Duration::from_secs(1)).await,
            Outcome::Missing
        ));
        let mixed = vec![
            (0, after(1, Probe::NotFound)),
            (1, after(2, Probe::Failed("refused".into()))),
        ];
        match search(mixed, Duration::from_secs(1)).await {
            Outcome::Failed(f) => assert_eq!(f, vec![(1, "refused".to_string())]),
            _ => panic!("expected a failure"),
        }
        let slow = vec![
            (0, after(1, Probe::NotFound)),
            (1, after(5_000, Probe::Found("late"))),
        ];
        match search(slow, Duration::from_secs(1)).await {
            Outcome::TimedOut { pending, failed } => {
                assert_eq!(pending, vec![1]);
                assert!(failed.is_empty());
            }
            _ => panic!("expected a timeout"),
        }
    }
}
