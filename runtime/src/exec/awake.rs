//! Keeps the pool's other threads awake through a program run. A training step is hundreds
//! of short parallel steps (kernels of 0.1–1 ms, gemm calls), with one-thread steps between
//! them; an idle rayon worker goes to sleep within microseconds, and waking it again (a futex
//! wake and a reschedule, tens to hundreds of microseconds on a virtual machine) costs a good
//! part of each short step's parallelism. While a run lasts, one keeper per other thread
//! polls the pool for work (`rayon::yield_now`) instead of sleeping, so it steals each step's
//! pieces as soon as they exist. What runs, and so every result, is unchanged.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a pool thread; with `keep`, every other pool thread polls for work until `f`
/// returns (or unwinds).
pub fn run<R: Send>(keep: bool, f: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        // Set on return and on unwind alike: the scope waits for the keepers to see it.
        let _stop = Stop(&stop);
        if keep {
            let home = rayon::current_thread_index();
            for _ in 1..rayon::current_num_threads() {
                keeper(s, &stop, home);
            }
        }
        f()
    })
}

/// Sets the flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Spawns a job that polls the pool for work until `stop`. Taken by the thread running the
/// program itself (it may pop its own spawned job while it waits on a step), the job hands
/// itself back to the pool instead, so that another thread takes it.
fn keeper<'s>(s: &rayon::Scope<'s>, stop: &'s AtomicBool, home: Option<usize>) {
    s.spawn(move |s| {
        if rayon::current_thread_index() == home {
            if !stop.load(Ordering::Acquire) {
                keeper(s, stop, home);
            }
            return;
        }
        while !stop.load(Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Work inside a kept-awake run completes and returns its value, nested runs included
    /// (a program run from inside another run's parallel step).
    #[test]
    fn runs_complete_nested_and_in_parallel() {
        let total: u64 = run(true, || {
            (0..64u64)
                .into_par_iter()
                .map(|i| {
                    run(true, || {
                        (0..100u64).into_par_iter().map(|j| i * j).sum::<u64>()
                    })
                })
                .sum()
        });
        let want: u64 = (0..64u64)
            .map(|i| (0..100u64).map(|j| i * j).sum::<u64>())
            .sum();
        assert_eq!(total, want);
    }

    /// Several threads outside the pool running kept-awake runs at once (as parallel tests
    /// do) all finish.
    #[test]
    fn concurrent_runs_from_outside_the_pool_finish() {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..20u64)
                        .map(|r| {
                            run(true, || {
                                (0..1000u64)
                                    .into_par_iter()
                                    .map(|x| x ^ (t + r))
                                    .sum::<u64>()
                            })
                        })
                        .sum::<u64>()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let want: u64 = (0..20u64)
                .map(|r| (0..1000u64).map(|x| x ^ (t as u64 + r)).sum::<u64>())
                .sum();
            assert_eq!(h.join().expect("run finished"), want);
        }
    }

    /// A panic inside the run reaches the caller instead of leaving the keepers spinning.
    #[test]
    fn a_panicking_run_unwinds() {
        let r = std::panic::catch_unwind(|| {
            run(true, || {
                (0..8).into_par_iter().for_each(|_| ());
                panic!("step failed")
            })
        });
        assert!(r.is_err());
    }
}
