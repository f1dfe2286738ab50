//! Single flight: concurrent loads of one key share one store read.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

type Flight<T> = Shared<BoxFuture<'static, Result<T, String>>>;

/// Loads in flight, by key.
pub struct Flights<T> {
    inflight: Mutex<HashMap<String, Flight<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self { inflight: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// The outcome of `load` for `key`, started by the first caller; later
    /// callers while it runs wait for the same outcome.
    pub async fn run(
        &self,
        key: &str,
        load: impl FnOnce() -> BoxFuture<'static, Result<T, String>>,
    ) -> Result<T, String> {
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inflight.entry(key.to_owned()).or_insert_with(|| load().shared()).clone()
        };
        let result = flight.await;
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
        result
    }
}
