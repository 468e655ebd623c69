//! A fit's progress, for pruning: iterative estimators (logistic regression's iterations,
//! k-means' Lloyd passes, boosted trees' rounds) offer the model so far at each step to the
//! progress hook of the task they run in, which scores it on the trial's held-out rows and
//! reports the value (see `quiver_engine::fanout::report`). A fit outside such a task pays
//! nothing: no hook, no model built.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Transformer;
use crate::error::Result;

/// A boxed report, as [`Progress::report`] returns it.
pub type BoxedReport<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Receives the model so far at the steps it asks for.
pub trait Progress: Send + Sync {
    /// Whether the model at `step` is wanted (building it and scoring it cost a pass).
    fn due(&self, step: u64) -> bool;
    /// Scores `model`, the fit after `step` steps, and reports it: an error stops the fit
    /// (the trial was pruned).
    fn report(&self, step: u64, model: Arc<dyn Transformer>) -> BoxedReport<'_>;
}

tokio::task_local! {
    static PROGRESS: Arc<dyn Progress>;
}

/// Runs `fit` with `progress` as its hook.
pub async fn with_progress<F: Future>(progress: Arc<dyn Progress>, fit: F) -> F::Output {
    PROGRESS.scope(progress, fit).await
}

/// The hook of the fit running in this task, if any: capture it before handing work to
/// compute threads.
pub fn current() -> Option<Arc<dyn Progress>> {
    PROGRESS.try_with(Arc::clone).ok()
}

/// Offers the model at `step` to `progress` when it wants it; `model` is built only then.
pub(crate) async fn offer(
    progress: Option<&Arc<dyn Progress>>,
    step: u64,
    model: impl FnOnce() -> Result<Arc<dyn Transformer>>,
) -> Result<()> {
    match progress {
        Some(p) if p.due(step) => p.report(step, model()?).await,
        _ => Ok(()),
    }
}

/// [`offer`] from a compute thread (boosted trees grow there): waits for the report.
pub(crate) fn offer_blocking(
    progress: Option<&Arc<dyn Progress>>,
    step: u64,
    model: impl FnOnce() -> Result<Arc<dyn Transformer>>,
) -> Result<()> {
    match progress {
        Some(p) if p.due(step) => {
            let model = model()?;
            quiver_engine::fanout::block_on(p.report(step, model))
        }
        _ => Ok(()),
    }
}

/// Fitted stages in front of the model a later estimator reports (a pipeline's), so the hook
/// scores raw rows.
pub(crate) struct AfterStages {
    pub stages: Vec<Arc<dyn crate::DynModel>>,
    pub inner: Arc<dyn Progress>,
}

#[derive(Debug)]
struct Chain(Vec<Arc<dyn crate::DynModel>>, Arc<dyn Transformer>);

impl Transformer for Chain {
    fn transform(&self, data: &quiver_engine::Dataset) -> Result<quiver_engine::Dataset> {
        let mut current = data.clone();
        for s in &self.0 {
            current = s.transform(&current)?;
        }
        self.1.transform(&current)
    }
}

impl Progress for AfterStages {
    fn due(&self, step: u64) -> bool {
        self.inner.due(step)
    }

    fn report(&self, step: u64, model: Arc<dyn Transformer>) -> BoxedReport<'_> {
        let chained: Arc<dyn Transformer> = Arc::new(Chain(self.stages.clone(), model));
        self.inner.report(step, chained)
    }
}
