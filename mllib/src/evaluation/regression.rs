//! `RegressionEvaluator`: RMSE, MSE, MAE and R² in one aggregate pass.

use super::*;

/// Regression metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub count: u64,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    /// 1 − SSE / SST (SST about the label mean).
    pub r2: f64,
}

/// RMSE, MSE, MAE and R² of a prediction column against the dataset's label.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionEvaluator {
    prediction_col: String,
}

impl Default for RegressionEvaluator {
    fn default() -> Self {
        RegressionEvaluator {
            prediction_col: "prediction".to_string(),
        }
    }
}

impl RegressionEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<RegressionMetrics> {
        let s = evaluate_with(session, data, &self.prediction_col, RegressionStat).await?;
        // s = [n, mean_y, m2_y, sse, sae]
        let n = s[0];
        let mse = s[3] / n;
        Ok(RegressionMetrics {
            count: n as u64,
            mse,
            rmse: mse.sqrt(),
            mae: s[4] / n,
            r2: if s[2] > 0.0 { 1.0 - s[3] / s[2] } else { 0.0 },
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RegressionStat;

impl Statistic for RegressionStat {
    type State = Vec<f64>;
    type Output = Vec<f64>;

    const NAME: &'static str = "quiver_regression_metrics";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the regression metrics", self)
    }
    fn dim(&self) -> usize {
        1
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 5]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        let n = b.n_rows as f64;
        if n == 0.0 {
            return Ok(());
        }
        let mean = y.iter().sum::<f64>() / n;
        let m2: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum();
        let (mut sse, mut sae) = (0.0, 0.0);
        for (p, t) in b.values.iter().zip(y) {
            sse += (p - t) * (p - t);
            sae += (p - t).abs();
        }
        self.merge(s, &vec![n, mean, m2, sse, sae])
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        let (na, nb) = (s[0], o[0]);
        if nb == 0.0 {
            return Ok(());
        }
        let n = na + nb;
        let delta = o[1] - s[1];
        s[2] += o[2] + delta * delta * na * nb / n;
        s[1] += delta * nb / n;
        s[0] = n;
        s[3] += o[3];
        s[4] += o[4];
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        if s[0] == 0.0 {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(s, out);
    }
    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        Ok(decode_f64s(bytes, 5)?.0)
    }
}
