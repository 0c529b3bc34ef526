//! A global `metrics` recorder for tests that count what eventflow recorded: it keeps every
//! counter, gauge and histogram series it is asked for, and reading never resets anything. The
//! consumer records from its own threads, so the recorder must be global: one per test binary,
//! installed by the first call to [`recorder`]; tests read only the series labelled with their
//! own names, so they run in parallel.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

/// Keeps every series it is asked for; reading never resets anything.
#[derive(Default)]
pub struct Kept {
    pub counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    pub gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    pub histograms: Mutex<HashMap<Key, Arc<Samples>>>,
}

#[derive(Default)]
pub struct Samples(pub Mutex<Vec<f64>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().push(value);
    }
}

struct Global(&'static Kept);

impl Recorder for Global {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(
            self.0
                .counters
                .lock()
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.gauges.lock().entry(key.clone()).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(
            self.0
                .histograms
                .lock()
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }
}

/// The binary's recorder, installed on first use.
pub fn recorder() -> &'static Kept {
    static KEPT: OnceLock<&'static Kept> = OnceLock::new();
    KEPT.get_or_init(|| {
        let kept: &'static Kept = Box::leak(Box::default());
        metrics::set_global_recorder(Global(kept)).expect("the only recorder of this binary");
        kept
    })
}
