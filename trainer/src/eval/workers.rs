//! The evaluation's threads: how many, the worker pool of its passes, and the
//! split of one batch of verdicts over the CPUs.
//!
//! Three levels share the CPUs without oversubscribing them: the engine's passes
//! run jobs on [`run_on_workers`] (one thread per CPU), and each worker asks the
//! deployed system for verdicts, which [`parallel_ranges`] would spread over every
//! CPU again, and runs the float reference, whose every matrix product dfdx splits
//! over rayon's global pool (one thread per CPU) again. Inside a worker both run on
//! the worker's own thread instead: with two workers on two cores, the nested
//! splitting made the evaluation 1.6× slower, its threads waiting on each other
//! (BENCHMARKS.md, "Attack cost"). The results are the same either way: a split
//! matrix product divides the rows and columns of its output, never a sum.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The default number of threads: one per CPU this process may use.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

std::thread_local! {
    /// Set on the evaluation's own worker threads, which already use every CPU:
    /// the verdicts they ask for then run on the calling thread.
    static SINGLE_THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`parallel_ranges`] confined to the calling thread (for a worker
/// of a pool that already has a thread per CPU).
pub fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    let before = SINGLE_THREADED.with(|c| c.replace(true));
    let r = f();
    SINGLE_THREADED.with(|c| c.set(before));
    r
}

/// Runs `f` over `0..n` split into one contiguous range per CPU thread (one range,
/// on the calling thread, inside [`single_threaded`]) and concatenates the results
/// in order. A panicking worker is re-raised.
pub fn parallel_ranges<T: Send, E: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>, E> + Sync,
) -> Result<Vec<T>, E> {
    let threads = if SINGLE_THREADED.with(|c| c.get()) {
        1
    } else {
        cpu_threads()
    }
    .clamp(1, n.max(1));
    if threads == 1 {
        return f(0..n);
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t * per..((t + 1) * per).min(n)))
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r?),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(out)
    })
}

/// Sets the pool's stop flag when a worker unwinds, so that the others stop after
/// their current job instead of running the rest of the jobs before the panic is
/// re-raised.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Relaxed);
        }
    }
}

/// Runs `run` on every job, on `threads` worker threads taking the jobs in order,
/// and hands each result with its job to `on_result` on the calling thread, in the
/// order the jobs finish (in job order with one thread, which runs on the calling
/// thread). The first error, from `run` or `on_result`, stops the workers after
/// their current job and is returned; a panicking worker stops them too and is
/// re-raised. Inside a worker, [`parallel_ranges`] runs on the worker's thread.
pub fn run_on_workers<J: Sync, R: Send, E: Send>(
    threads: usize,
    jobs: &[J],
    run: impl Fn(&J) -> Result<R, E> + Sync,
    mut on_result: impl FnMut(&J, R) -> Result<(), E>,
) -> Result<(), E> {
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        for job in jobs {
            on_result(job, run(job)?)?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, failed, run) = (&next, &failed, &run);
            handles.push(s.spawn(move || {
                let _stop = StopOnPanic(failed);
                let work = || {
                    single_threaded(|| {
                        while !failed.load(Relaxed) {
                            let Some(job) = jobs.get(next.fetch_add(1, Relaxed)) else {
                                break;
                            };
                            let r = run(job);
                            failed.fetch_or(r.is_err(), Relaxed);
                            if tx.send((job, r)).is_err() {
                                break;
                            }
                        }
                    })
                };
                // dfdx's matrix products inside `run` take the pool they run in;
                // should the pool not start, they share the global one (slower,
                // the same results).
                match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(pool) => pool.install(work),
                    Err(_) => work(),
                }
            }));
        }
        drop(tx);
        for (job, r) in rx {
            if let Err(e) = r.and_then(|r| on_result(job, r)) {
                // The workers stop after their current job.
                failed.store(true, Relaxed);
                return Err(e);
            }
        }
        // Joined here, a worker's panic is re-raised with its own message (the
        // scope would raise "a scoped thread panicked" instead).
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_job_once_with_its_result() {
        for threads in [1, 2, 5, 64] {
            let jobs: Vec<usize> = (0..37).collect();
            let mut got = Vec::new();
            run_on_workers(
                threads,
                &jobs,
                |&j| Ok::<_, ()>(j * j),
                |&j, r| {
                    got.push((j, r));
                    Ok(())
                },
            )
            .unwrap();
            if threads == 1 {
                // One thread: job order, on the calling thread.
                assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
            }
            got.sort_unstable();
            assert_eq!(got, (0..37).map(|j| (j, j * j)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn an_error_stops_the_pool_and_is_returned() {
        for threads in [1, 3] {
            let jobs: Vec<usize> = (0..1000).collect();
            let ran = AtomicUsize::new(0);
            let r = run_on_workers(
                threads,
                &jobs,
                |&j| {
                    ran.fetch_add(1, Relaxed);
                    if j == 10 {
                        Err(j)
                    } else {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        Ok(())
                    }
                },
                |_, ()| Ok(()),
            );
            assert_eq!(r, Err(10));
            // Each worker finishes at most its current job after the error.
            assert!(
                ran.load(Relaxed) < 10 + 2 * threads + 1,
                "{threads} threads"
            );
        }
        // An error of `on_result` stops it as well.
        let jobs: Vec<usize> = (0..1000).collect();
        let ran = AtomicUsize::new(0);
        let r = run_on_workers(
            2,
            &jobs,
            |_| {
                ran.fetch_add(1, Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(200));
                Ok(())
            },
            |&j, ()| if j == 3 { Err("stop") } else { Ok(()) },
        );
        assert_eq!(r, Err("stop"));
        assert!(ran.load(Relaxed) < 100);
    }

    #[test]
    fn a_panicking_worker_stops_the_others_and_is_reraised() {
        // The panic hook (a backtrace, when RUST_BACKTRACE is set) runs before the
        // unwinding that stops the pool, so the other worker may finish a few
        // hundred jobs first; without the stop it would run all of them.
        let jobs: Vec<usize> = (0..20_000).collect();
        let ran = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_on_workers(
                2,
                &jobs,
                |&j| {
                    ran.fetch_add(1, Relaxed);
                    assert!(j != 5, "job 5 panics");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    Ok::<_, ()>(())
                },
                |_, ()| Ok(()),
            )
        }));
        let message = r.expect_err("the panic is re-raised");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"job 5 panics"));
        assert!(
            ran.load(Relaxed) < jobs.len() / 2,
            "ran {}",
            ran.load(Relaxed)
        );
    }

    #[test]
    fn workers_keep_verdicts_on_their_own_thread() {
        let jobs = [0usize; 4];
        let mut spans = Vec::new();
        run_on_workers(
            2,
            &jobs,
            |_| {
                let me = std::thread::current().id();
                let ids = parallel_ranges(8, |r| {
                    Ok::<_, ()>(vec![std::thread::current().id(); r.len()])
                })?;
                Ok::<_, ()>(ids.iter().all(|&id| id == me))
            },
            |_, same| {
                spans.push(same);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(spans, [true; 4]);
        // ... and dfdx's matrix products too: rayon's pool inside a worker has one
        // thread, whatever the global pool has (three here, unless another test of
        // this process started it first).
        if rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build_global()
            .is_ok()
        {
            assert_eq!(rayon::current_num_threads(), 3);
        }
        let mut pools = Vec::new();
        run_on_workers(
            2,
            &jobs,
            |_| Ok::<_, ()>(rayon::current_num_threads()),
            |_, n| {
                pools.push(n);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(pools, [1; 4]);
        // Outside a pool, one range per CPU, concatenated in order.
        let all = parallel_ranges(10, |r| Ok::<_, ()>(r.collect())).unwrap();
        assert_eq!(all, (0..10).collect::<Vec<usize>>());
    }
}
