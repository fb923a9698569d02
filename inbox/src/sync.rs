//! The locks and atomics the inbox is built on, named once so that its concurrency can be
//! model-checked: parking_lot's and std's in every build, loom's with the `loom` feature
//! (`cargo test -p switchboard-inbox --features loom models`, which runs the models in
//! `lib.rs` under every interleaving loom explores). Only what the inbox calls is here,
//! with parking_lot's signatures; nothing else should use it.

#[cfg(not(feature = "loom"))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::atomic::{AtomicI32, AtomicUsize};

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicI32, AtomicUsize};
#[cfg(feature = "loom")]
pub(crate) use model::{Condvar, Mutex, MutexGuard};

/// loom's `Mutex` and `Condvar` behind parking_lot's signatures (no poisoning; `wait` takes
/// the guard by reference). loom never times a wait out: a model that needs a timeout to
/// end is reported as a deadlock, which is what a lost wake-up looks like.
#[cfg(feature = "loom")]
mod model {
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    #[derive(Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// Always `Some` except inside `Condvar::wait`.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("held")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("held")
        }
    }

    #[derive(Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    pub(crate) struct WaitTimeoutResult;

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(&self) -> bool {
            false
        }
    }

    impl Condvar {
        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let held = guard.0.take().expect("held");
            guard.0 = Some(self.0.wait(held).unwrap_or_else(|e| e.into_inner()));
        }

        pub(crate) fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, _deadline: Instant) -> WaitTimeoutResult {
            self.wait(guard);
            WaitTimeoutResult
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
