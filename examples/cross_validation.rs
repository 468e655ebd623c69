//! Model selection on the breast-cancer data, MLlib style: a parameter grid over the penalty of
//! a standardised logistic regression, scored by 3-fold cross-validation (ROC AUC), two maps at
//! a time; the best map refitted on all rows predicts the data.
//!
//! ```text
//! cargo run --example cross_validation
//! ```

use quiver_driver::mllib::Transformer;
use quiver_driver::mllib::tuning::{CrossValidator, ParamGridBuilder, TrainEval};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let digits = quiver_driver::shipped_digits().ok_or("the shipped data directory not found")?;
    let data = digits.replace("digits.parquet", "breast_cancer.parquet");
    let session = quiver_driver::session()?;

    let grid = ParamGridBuilder::new()
        .add_grid("reg_param", [0.001, 0.01, 0.1, 1.0])
        .add_grid("elastic_net_param", [0.0, 0.5])
        .build();
    let spec = TrainEval::new(&data, "logistic_regression")
        .label("label")
        .metric("area_under_roc")
        .stages(["standard_scaler"]);
    let cv = CrossValidator::new(spec)
        .param_grid(grid.clone())
        .num_folds(3)
        .parallelism(2.min(session.config().compute_threads))
        .seed(7)
        .fit(&session)
        .await?;

    println!("{} by 3-fold cross-validation:", cv.metric);
    for (map, metric) in grid.iter().zip(&cv.metrics) {
        let shown = metric.map_or("failed".to_string(), |m| format!("{m:.5}"));
        println!("  {}  {shown}", serde_json::to_string(map)?);
    }
    println!(
        "best: {} ({:.5}); refitted on all rows: {} stages",
        serde_json::to_string(&cv.best_params)?,
        cv.metrics[cv.best_index].unwrap_or(f64::NAN),
        cv.best_model.stages().len()
    );
    let all = quiver_driver::Dataset::new(session.read(&data).await?)
        .with_numeric_features_except(&["label"])?
        .with_label("label")?;
    let scored = cv.best_model.transform(&all)?;
    let rows = scored.dataframe().clone().count().await?;
    println!("scored {rows} rows with the best model");
    Ok(())
}
