//! One stage per statistic pass: a statistic's per-partition states go straight to the client,
//! which merges them in a fixed order, instead of through a shuffle into a final aggregate.
//!
//! DataFusion plans `aggregate(statistic)` as a partial aggregate per partition, a coalesce and
//! a final aggregate; on Ballista the coalesce is a stage boundary, so every pass is two stages
//! (the second one task that fetches every partial state over the network) and then the
//! client's fetch. A statistic's partial state and its final output are the same thing (its
//! encoded state), so [`PartialsToClient`] ends the plan at the partial aggregate: one stage,
//! one row per partition, and [`super::run_embedded`] merges the rows in the order of their
//! bytes, which makes the result independent of the order the partitions finished in.
//!
//! Only plans whose output is the single column [`STATE_COLUMN`] are touched: the ones
//! [`super::run_embedded`] builds, never a user's query.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::error::Result as DFResult;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::projection::ProjectionExec;

/// The output column of a statistic's aggregate query.
pub const STATE_COLUMN: &str = "__quiver_state";

/// The physical optimizer rule (see the module documentation); the embedded session and the
/// scheduler run it last.
#[derive(Debug, Default)]
pub struct PartialsToClient;

impl PhysicalOptimizerRule for PartialsToClient {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(partials(&plan)?.unwrap_or(plan))
    }

    fn name(&self) -> &str {
        "quiver_partials_to_client"
    }

    fn schema_check(&self) -> bool {
        // The partial state may differ from the final output in nullability only.
        false
    }
}

/// `Final(Coalesce(Partial(x)))` of a statistic → the partial states, named as the output.
fn partials(plan: &Arc<dyn ExecutionPlan>) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
    let schema = plan.schema();
    let Some(last) = plan.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if schema.fields().len() != 1
        || schema.field(0).name() != STATE_COLUMN
        || !matches!(
            last.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        )
        || !last.group_expr().is_empty()
    {
        return Ok(None);
    }
    let Some(coalesce) = last.input().downcast_ref::<CoalescePartitionsExec>() else {
        return Ok(None);
    };
    let below = coalesce.input();
    let Some(first) = below.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if !matches!(first.mode(), AggregateMode::Partial)
        || !first.group_expr().is_empty()
        || below.schema().fields().len() != 1
    {
        return Ok(None);
    }
    let state = Column::new(below.schema().field(0).name(), 0);
    Ok(Some(Arc::new(ProjectionExec::try_new(
        vec![(
            Arc::new(state) as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            STATE_COLUMN.to_string(),
        )],
        Arc::clone(below),
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{StatisticUdaf, run_embedded};
    use crate::summary::Summarizer;
    use crate::{Dataset, QuiverSession};
    use arrow::array::{Float64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::AggregateUDF;
    use datafusion::physical_plan::displayable;

    fn data(session: &QuiverSession, partitions: usize) -> Dataset {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let batches = (0..6)
            .map(|b| {
                let values: Vec<f64> = (0..1000).map(|i| ((b * 1000 + i) as f64).sin()).collect();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(Float64Array::from(values))],
                )
                .unwrap()
            })
            .collect();
        Dataset::new(session.from_batches(batches, partitions).unwrap())
            .with_features(["x"])
            .unwrap()
    }

    async fn plan_of(ds: &Dataset, alias: &str) -> String {
        let udaf = AggregateUDF::from(StatisticUdaf::new(Arc::new(Summarizer::new(1))).unwrap());
        let args = super::super::udaf::statistic_args(ds, &Summarizer::new(1)).unwrap();
        let plan = ds
            .dataframe()
            .clone()
            .aggregate(vec![], vec![udaf.call(args).alias(alias)])
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        displayable(plan.as_ref()).indent(false).to_string()
    }

    #[tokio::test]
    async fn a_statistic_pass_ends_at_the_partial_states_and_merges_them_in_a_fixed_order() {
        let session = QuiverSession::embedded().unwrap();
        let ds = data(&session, 3);
        let plan = plan_of(&ds, STATE_COLUMN).await;
        assert!(plan.contains("mode=Partial"), "{plan}");
        assert!(!plan.contains("mode=Final"), "{plan}");
        assert!(!plan.contains("CoalescePartitionsExec"), "{plan}");
        // Any other aggregate (a user's query) keeps its final step.
        let other = plan_of(&ds, "state").await;
        assert!(other.contains("mode=Final"), "{other}");
        // The same summary from any partitioning, bit for bit where the reduction is the same
        // shape, and always equal to the merge of the same data on one partition.
        let stat = Arc::new(Summarizer::new(1));
        let one = run_embedded(&data(&session, 1), Arc::clone(&stat))
            .await
            .unwrap();
        for partitions in [2, 3, 6] {
            let many = run_embedded(&data(&session, partitions), Arc::clone(&stat))
                .await
                .unwrap();
            assert_eq!(many.count, one.count);
            for (a, b) in many.mean.iter().zip(&one.mean) {
                assert!(
                    (a - b).abs() <= 1e-12,
                    "{partitions} partitions: {a} vs {b}"
                );
            }
            let again = run_embedded(&data(&session, partitions), Arc::clone(&stat))
                .await
                .unwrap();
            assert_eq!(
                again.mean, many.mean,
                "{partitions} partitions: two runs differ"
            );
        }
    }
}
