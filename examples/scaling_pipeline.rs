//! A pipeline of feature stages on the digits data: assemble the 64 pixels, standardise, then
//! rescale to [0, 1]; save the fitted pipeline to a model store, load it back and apply it.
//!
//! ```text
//! cargo run --example scaling_pipeline
//! ```

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use quiver_driver::mllib::{
    Estimator, MinMaxScaler, Pipeline, PipelineModel, StandardScaler, Transformer, VectorAssembler,
    load, save,
};
use quiver_driver::{Dataset, Runner};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = quiver_driver::shipped_digits().ok_or("data/digits.parquet not found")?;
    let session = quiver_driver::session()?;
    let raw = Dataset::new(session.read(&path).await?).with_label("label")?;

    let pixels: Vec<String> = (0..64).map(|i| format!("pixel_{i}")).collect();
    let pipeline = Pipeline::new()
        .transformer(VectorAssembler::new(&pixels))
        .estimator(
            StandardScaler::new()
                .with_mean(true)
                .output_col("standardised"),
        )
        .estimator(MinMaxScaler::new().output_col("unit"));
    let model = pipeline.fit(&session, &raw).await?;
    println!("fitted {} stages on {path}", model.stages().len());

    let dir = tempfile::tempdir()?;
    let store = session.model_store_at(&dir.path().to_string_lossy())?;
    let meta = save(&store, "digits_scaling", &model).await?;
    println!(
        "saved '{}' version {} ({} parts)",
        meta.name,
        meta.version,
        meta.parts.len()
    );
    let reloaded: PipelineModel = load(&store, "digits_scaling", None).await?;

    let out = reloaded.transform(&raw)?;
    let summary = session.summarize(&out, Runner::Embedded).await?;
    println!(
        "after the pipeline: {} features, min {:.3}, max {:.3} (pixel_42)",
        summary.dim(),
        summary.min[42],
        summary.max[42]
    );
    let first = out
        .dataframe()
        .clone()
        .select_columns(&["unit"])?
        .limit(0, Some(1))?
        .collect()
        .await?;
    let v = first[0].column(0).as_fixed_size_list().value(0);
    let v = v.as_primitive::<Float64Type>();
    let head: Vec<String> = (0..8.min(v.len()))
        .map(|i| format!("{:.3}", v.value(i)))
        .collect();
    println!("first image, first 8 values: [{}]", head.join(", "));
    Ok(())
}
