//! The `TRANSFORM` clause of `CREATE MODEL`, as in BigQuery ML:
//!
//! ```sql
//! CREATE MODEL m
//!   TRANSFORM (ml_standard_scaler(age) OVER () AS age, ml_one_hot_encoder(city) OVER () AS city,
//!              ml_quantile_bucketize(income, 4) OVER () AS income_q, hours * 2 AS h2, label)
//!   OPTIONS (model_type = 'logistic_reg', input_label_cols = ['label'])
//! AS SELECT age, city, income, hours, label FROM people
//! ```
//!
//! The list is evaluated on the training rows: each analytic function reads its statistics
//! there (one aggregate query per call, innermost first) and is replaced by plain SQL with
//! them as literals, so the fitted clause is ordinary SQL stored in the model (a
//! [`SqlTransformModel`] stage) and applied again by `ml_predict`, `ml_evaluate` and the
//! explanation tables to raw rows. Columns outside the list are not features. The functions:
//!
//! | function | result |
//! |---|---|
//! | `ml_standard_scaler(x) OVER ()` | `(x − mean) / stddev` (sample standard deviation; 0 when it is 0) |
//! | `ml_min_max_scaler(x) OVER ()` | `(x − min) / (max − min)`, capped to [0, 1] for values outside the training range |
//! | `ml_max_abs_scaler(x) OVER ()` | `x / max(|x|)` |
//! | `ml_imputer(x, 'mean' \| 'median' \| 'most_frequent') OVER ()` | `x`, nulls replaced by the statistic (`most_frequent` also for strings; ties take the smallest value) |
//! | `ml_bucketize(x, [s₁, …, sₙ] [, exclude_boundaries])` | `'bin_1'` for `x < s₁`, `'bin_i'` for `sᵢ₋₁ ≤ x < sᵢ`, `'bin_{n+1}'` for `x ≥ sₙ`; null stays null |
//! | `ml_quantile_bucketize(x, n) OVER ()` | `ml_bucketize` at the training quantiles `1/n … (n−1)/n` (as `QuantileDiscretizer`) |
//! | `ml_label_encoder(s [, top_k [, frequency_threshold]]) OVER ()` | the category's index 1… in sorted order; null and unknown values 0 |
//! | `ml_one_hot_encoder(s [, drop [, top_k [, frequency_threshold]]]) OVER ()` | one 0/1 column `name_category` per category (`drop = 'most_frequent'` leaves that one out); unknown and null values are all zeros |
//! | `ml_polynomial_expand(STRUCT(a, b, …) [, degree])` | one column per monomial up to `degree` (default 2, at most 4), `name_a`, `name_a_b`, … in scikit-learn's order |
//! | `ml_feature_cross(STRUCT(a, b, …) [, degree])` | one string column per combination of 2 … `degree` fields, `name_a_b` = `a || '_' || b` |
//!
//! `top_k` (default 32,000) and `frequency_threshold` (default 5) are BigQuery ML's: only the
//! `top_k` most frequent categories seen at least `frequency_threshold` times are kept.
//! The one-hot, polynomial and cross functions write several columns, so each must be a whole
//! item of the list (its alias, if any, prefixes the column names).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{avg, count, max, median, min, stddev};
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::{DataFrame, cast, col, lit};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, SelectItem,
    Value, WindowType, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use quiver_engine::{Dataset, QuiverError, QuiverSession};
use quiver_mllib::feature::{SqlColumn, SqlInput, SqlTransformModel, SqlTransformParams};
use quiver_mllib::{Estimator, PolynomialExpansion, QuantileDiscretizer};

use crate::error::{Result, SqlError};

/// BigQuery ML's defaults for the category encoders.
const DEFAULT_TOP_K: usize = 32_000;
const DEFAULT_FREQUENCY_THRESHOLD: usize = 5;
/// The most fields a polynomial expansion or a feature cross takes, and its highest degree.
const MAX_DEGREE: usize = 4;
const MAX_STRUCT_FIELDS: usize = 64;

/// The column the argument of the call being fitted is computed into.
const ARG: &str = "__quiver_arg";

/// Functions that replace one value by one value.
const SCALAR: &[&str] = &[
    "ml_standard_scaler",
    "ml_min_max_scaler",
    "ml_max_abs_scaler",
    "ml_imputer",
    "ml_bucketize",
    "ml_quantile_bucketize",
    "ml_label_encoder",
];
/// Functions that write several columns (whole items only).
const MULTI: &[&str] = &[
    "ml_one_hot_encoder",
    "ml_polynomial_expand",
    "ml_feature_cross",
];
/// The analytic ones (they need `OVER ()`).
const ANALYTIC: &[&str] = &[
    "ml_standard_scaler",
    "ml_min_max_scaler",
    "ml_max_abs_scaler",
    "ml_imputer",
    "ml_quantile_bucketize",
    "ml_label_encoder",
    "ml_one_hot_encoder",
];

fn err(reason: impl Into<String>) -> SqlError {
    SqlError::Invalid(format!("TRANSFORM: {}", reason.into()))
}

/// A column name as DataFusion reads the identifier (unquoted ones lower-cased).
fn normalized(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// A SQL number literal that reads back as the same f64.
fn number(v: f64) -> String {
    if v < 0.0 {
        format!("({v:?})")
    } else {
        format!("{v:?}")
    }
}

fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn parse_expr(sql: &str) -> Result<SqlExpr> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            err(format!(
                "internal: generated SQL `{sql}` does not parse: {e}"
            ))
        })
}

/// A call of one of the functions, taken apart.
struct Call {
    name: String,
    args: Vec<SqlExpr>,
    text: String,
}

impl Call {
    fn of(e: &SqlExpr) -> Option<&Function> {
        match e {
            SqlExpr::Function(f)
                if f.name.0.len() == 1
                    && f.name
                        .to_string()
                        .to_ascii_lowercase()
                        .trim_matches('"')
                        .starts_with("ml_") =>
            {
                let n = f.name.to_string().to_ascii_lowercase();
                (SCALAR.contains(&n.as_str()) || MULTI.contains(&n.as_str())).then_some(f)
            }
            _ => None,
        }
    }

    fn parse(f: &Function) -> Result<Call> {
        let name = f.name.to_string().to_ascii_lowercase();
        let text = f.to_string();
        let mut args = Vec::new();
        match &f.args {
            FunctionArguments::List(list) => {
                if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                    return Err(err(format!("{text}: plain arguments only")));
                }
                for a in &list.args {
                    match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
                        _ => {
                            return Err(err(format!(
                                "{text}: arguments are positional expressions"
                            )));
                        }
                    }
                }
            }
            FunctionArguments::None => {}
            FunctionArguments::Subquery(_) => {
                return Err(err(format!("{text}: a subquery is not an argument")));
            }
        }
        let analytic = ANALYTIC.contains(&name.as_str());
        match (&f.over, analytic) {
            (None, true) => {
                return Err(err(format!(
                    "{name} is an analytic function computed over the training rows: write {name}(…) OVER ()"
                )));
            }
            (Some(WindowType::WindowSpec(w)), true)
                if w.window_name.is_none()
                    && w.partition_by.is_empty()
                    && w.order_by.is_empty()
                    && w.window_frame.is_none() => {}
            (Some(_), true) => {
                return Err(err(format!(
                    "{text}: only OVER () (all training rows) is supported"
                )));
            }
            (Some(_), false) => {
                return Err(err(format!(
                    "{name} is not an analytic function: drop OVER"
                )));
            }
            (None, false) => {}
        }
        if f.filter.is_some() || f.null_treatment.is_some() || !f.within_group.is_empty() {
            return Err(err(format!(
                "{text}: FILTER, NULLS and WITHIN GROUP do not apply"
            )));
        }
        Ok(Call { name, args, text })
    }

    /// Checks the argument count: `required` to `required + optional`.
    fn arity(&self, required: usize, optional: usize, usage: &str) -> Result<()> {
        let n = self.args.len();
        if n < required || n > required + optional {
            return Err(err(format!(
                "{}: takes {usage}, got {n} argument{}",
                self.text,
                if n == 1 { "" } else { "s" }
            )));
        }
        Ok(())
    }

    fn literal(&self, i: usize) -> Option<&Value> {
        match self.args.get(i)? {
            SqlExpr::Value(v) => Some(&v.value),
            _ => None,
        }
    }

    fn string_arg(&self, i: usize, what: &str) -> Result<Option<String>> {
        match self.literal(i) {
            None if self.args.len() <= i => Ok(None),
            Some(Value::SingleQuotedString(s) | Value::DoubleQuotedString(s)) => {
                Ok(Some(s.clone()))
            }
            _ => Err(err(format!(
                "{}: argument {} ({what}) must be a string literal",
                self.text,
                i + 1
            ))),
        }
    }

    fn count_arg(&self, i: usize, what: &str, min: usize) -> Result<Option<usize>> {
        if self.args.len() <= i {
            return Ok(None);
        }
        let v = match self.literal(i) {
            Some(Value::Number(n, _)) => n.parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(v) if v.fract() == 0.0 && v >= min as f64 && v < 1e9 => Ok(Some(v as usize)),
            _ => Err(err(format!(
                "{}: argument {} ({what}) must be a whole number ≥ {min}, got {}",
                self.text,
                i + 1,
                self.args[i]
            ))),
        }
    }
}

/// One output column before fitting.
struct Item {
    name: String,
    expr: SqlExpr,
    /// The item as written, for messages.
    text: String,
}

/// Fits the clause on the training rows `train`; `label` is the label's output name.
pub async fn fit(
    session: &QuiverSession,
    train: &DataFrame,
    items: &[SelectItem],
    label: Option<&str>,
) -> Result<SqlTransformModel> {
    let schema = train.schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut fitter = Fitter {
        session,
        train,
        columns: &columns,
    };
    let mut outputs: Vec<(String, String)> = Vec::new();
    for (k, item) in items.iter().enumerate() {
        for i in fitter.expand(k + 1, item).await? {
            fitter.check_columns(&i)?;
            let expr = fitter.fit_expr(i.expr, &i.text).await?;
            if outputs.iter().any(|(n, _)| *n == i.name) {
                return Err(err(format!(
                    "two items write column '{}'; give one another name with AS",
                    i.name
                )));
            }
            outputs.push((i.name, expr.to_string()));
        }
    }
    let names = || {
        outputs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let label_at = match label {
        Some(l) => Some(outputs.iter().position(|(n, _)| n == l).ok_or_else(|| {
            SqlError::InvalidOption {
                option: "input_label_cols".to_string(),
                reason: format!(
                    "label column '{l}' is not among the TRANSFORM's outputs ({}); add it to the TRANSFORM list",
                    names()
                ),
            }
        })?),
        None => None,
    };
    // The columns each output reads, by DataFusion's own reading of the SQL.
    let refs = |sql: &str, name: &str| -> Result<BTreeSet<String>> {
        let e = train
            .parse_sql_expr(sql)
            .map_err(|e| err(format!("column '{name}' = {sql}: {e}")))?;
        Ok(e.column_refs()
            .into_iter()
            .map(|c| c.name.clone())
            .collect())
    };
    let mut used = BTreeSet::new();
    let mut label_out = None;
    let mut features = Vec::new();
    for (i, (name, sql)) in outputs.iter().enumerate() {
        let r = refs(sql, name)?;
        if Some(i) == label_at {
            label_out = Some((
                SqlColumn {
                    name: name.clone(),
                    sql: sql.clone(),
                },
                r.into_iter().collect::<Vec<_>>(),
            ));
        } else {
            used.extend(r);
            features.push(SqlColumn {
                name: name.clone(),
                sql: sql.clone(),
            });
        }
    }
    if features.is_empty() {
        return Err(err("the list has no feature columns besides the label"));
    }
    let inputs = schema
        .fields()
        .iter()
        .filter(|f| used.contains(f.name()))
        .map(|f| SqlInput {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect();
    let clause = items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (label, label_inputs) = match label_out {
        Some((c, r)) => (Some(c), r),
        None => (None, Vec::new()),
    };
    SqlTransformModel::new(SqlTransformParams {
        inputs,
        outputs: features,
        label,
        label_inputs,
        clause,
    })
    .map_err(|e| err(e.to_string()))
}

struct Fitter<'a> {
    session: &'a QuiverSession,
    train: &'a DataFrame,
    columns: &'a [String],
}

impl Fitter<'_> {
    /// The output columns of item `k`: a wildcard's columns, a multi-column function's, or one.
    async fn expand(&mut self, k: usize, item: &SelectItem) -> Result<Vec<Item>> {
        let text = item.to_string();
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(normalized(alias))),
            SelectItem::Wildcard(o) => {
                let mut except = Vec::new();
                if let Some(e) = &o.opt_except {
                    except.push(normalized(&e.first_element));
                    except.extend(e.additional_elements.iter().map(normalized));
                }
                if o.opt_ilike.is_some()
                    || o.opt_exclude.is_some()
                    || o.opt_replace.is_some()
                    || o.opt_rename.is_some()
                    || o.opt_alias.is_some()
                {
                    return Err(err(format!(
                        "item {k} ({text}): only * and * EXCEPT (…) are supported"
                    )));
                }
                for c in &except {
                    if !self.columns.contains(c) {
                        return Err(self.missing(c, &text));
                    }
                }
                return Ok(self
                    .columns
                    .iter()
                    .filter(|c| !except.contains(c))
                    .map(|c| Item {
                        name: c.clone(),
                        expr: SqlExpr::Identifier(Ident::with_quote('"', c)),
                        text: text.clone(),
                    })
                    .collect());
            }
            SelectItem::ExprWithAliases { .. } => {
                return Err(err(format!("item {k} ({text}): give one name with AS")));
            }
            SelectItem::QualifiedWildcard(..) => {
                return Err(err(format!(
                    "item {k} ({text}): a qualified wildcard is not supported; use *"
                )));
            }
        };
        if let Some(f) = Call::of(expr) {
            let call = Call::parse(f)?;
            if MULTI.contains(&call.name.as_str()) {
                return self.expand_multi(call, alias, &text).await;
            }
        }
        let name = match (alias, expr) {
            (Some(a), _) => a,
            (None, SqlExpr::Identifier(i)) => normalized(i),
            (None, SqlExpr::CompoundIdentifier(parts)) => {
                normalized(parts.last().expect("a compound identifier has parts"))
            }
            (None, e) => {
                return Err(err(format!(
                    "item {k} ({e}) needs a name: write {e} AS name"
                )));
            }
        };
        Ok(vec![Item {
            name,
            expr: expr.clone(),
            text,
        }])
    }

    fn missing(&self, column: &str, text: &str) -> SqlError {
        err(format!(
            "column '{column}' in `{text}` is not among the training query's columns ({})",
            self.columns.join(", ")
        ))
    }

    /// Every column an item names must be one of the query's.
    fn check_columns(&self, item: &Item) -> Result<()> {
        let mut missing = None;
        let _ = visit_expressions(&item.expr, |e| {
            let name = match e {
                SqlExpr::Identifier(i) => Some(normalized(i)),
                SqlExpr::CompoundIdentifier(parts) => parts.last().map(normalized),
                _ => None,
            };
            match name {
                Some(n) if !self.columns.contains(&n) => {
                    missing = Some(n);
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        });
        match missing {
            Some(c) => Err(self.missing(&c, &item.text)),
            None => Ok(()),
        }
    }

    /// Replaces every single-valued call in `expr` by its fitted SQL, innermost first.
    async fn fit_expr(&mut self, mut expr: SqlExpr, text: &str) -> Result<SqlExpr> {
        loop {
            // The first call in post-order: one whose arguments hold no other call.
            let mut found = None;
            let _ = visit_expressions_mut(&mut expr, |e| {
                if Call::of(e).is_some() {
                    found = Some(e.clone());
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            let Some(call_expr) = found else {
                return Ok(expr);
            };
            let f = Call::of(&call_expr).expect("found a call");
            let call = Call::parse(f)?;
            if MULTI.contains(&call.name.as_str()) {
                return Err(err(format!(
                    "{} writes several columns, so it must be a whole item of the list, not part of `{text}`",
                    call.name
                )));
            }
            let fitted = parse_expr(&self.fit_scalar(&call).await?)?;
            let _ = visit_expressions_mut(&mut expr, |e| {
                if *e == call_expr {
                    *e = fitted.clone();
                }
                ControlFlow::<()>::Continue(())
            });
        }
    }

    /// The type of `arg` over the training rows (planning only).
    fn arg_type(&self, call: &Call, arg: &SqlExpr) -> Result<DataType> {
        let e = self
            .train
            .parse_sql_expr(&arg.to_string())
            .map_err(|e| err(format!("{}: {e}", call.text)))?;
        let t = e
            .get_type(self.train.schema())
            .map_err(|e| err(format!("{}: {e}", call.text)))?;
        Ok(t)
    }

    /// The training rows of `arg` as one column `ARG`, cast to `to` if given.
    fn arg_frame(&self, call: &Call, arg: &SqlExpr, to: Option<DataType>) -> Result<DataFrame> {
        let mut e = self
            .train
            .parse_sql_expr(&arg.to_string())
            .map_err(|e| err(format!("{}: {e}", call.text)))?;
        if let Some(t) = to {
            e = cast(e, t);
        }
        Ok(self.train.clone().select(vec![e.alias(ARG)])?)
    }

    fn wrong_type(call: &Call, arg: &SqlExpr, t: &DataType, needs: &str) -> SqlError {
        err(format!(
            "{}: argument `{arg}` has type {t}; {} needs {needs}",
            call.text, call.name
        ))
    }

    fn numeric_arg<'c>(&self, call: &'c Call, i: usize) -> Result<&'c SqlExpr> {
        let arg = &call.args[i];
        let t = self.arg_type(call, arg)?;
        if t.is_numeric() || t == DataType::Boolean || t == DataType::Null {
            Ok(arg)
        } else {
            Err(Self::wrong_type(call, arg, &t, "a number"))
        }
    }

    fn string_arg<'c>(&self, call: &'c Call, i: usize) -> Result<&'c SqlExpr> {
        let arg = &call.args[i];
        let t = self.arg_type(call, arg)?;
        let text = matches!(
            &t,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
        ) || matches!(&t, DataType::Dictionary(_, v) if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View));
        if text {
            Ok(arg)
        } else {
            Err(Self::wrong_type(call, arg, &t, "a string"))
        }
    }

    /// One row of f64 aggregates of `ARG` over the training rows.
    async fn stats(
        &self,
        call: &Call,
        arg: &SqlExpr,
        aggs: Vec<datafusion::prelude::Expr>,
    ) -> Result<Vec<Option<f64>>> {
        let n = aggs.len();
        let frame = self.arg_frame(call, arg, Some(DataType::Float64))?;
        let batches = frame
            .aggregate(
                vec![],
                aggs.into_iter()
                    .enumerate()
                    .map(|(i, a)| cast(a, DataType::Float64).alias(format!("s{i}")))
                    .collect(),
            )?
            .collect()
            .await?;
        let mut out = vec![None; n];
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            for (i, o) in out.iter_mut().enumerate() {
                let a = b.column(i).as_primitive::<Float64Type>();
                if a.is_valid(0) {
                    *o = Some(a.value(0));
                }
            }
        }
        Ok(out)
    }

    fn no_values(call: &Call) -> SqlError {
        err(format!(
            "{}: the argument has no non-null values in the training rows",
            call.text
        ))
    }

    /// The fitted SQL of a single-valued call.
    async fn fit_scalar(&mut self, call: &Call) -> Result<String> {
        let x = || format!("CAST(({}) AS DOUBLE)", call.args[0]);
        match call.name.as_str() {
            "ml_standard_scaler" => {
                call.arity(1, 0, "one numeric expression")?;
                let arg = self.numeric_arg(call, 0)?;
                let a = col(ARG);
                let s = self
                    .stats(call, arg, vec![avg(a.clone()), stddev(a)])
                    .await?;
                let mean = s[0].ok_or_else(|| Self::no_values(call))?;
                Ok(match s[1] {
                    Some(sd) if sd > 0.0 && sd.is_finite() => {
                        format!("(({} - {}) / {})", x(), number(mean), number(sd))
                    }
                    _ => format!("(({} - {}) * 0.0)", x(), number(mean)),
                })
            }
            "ml_min_max_scaler" => {
                call.arity(1, 0, "one numeric expression")?;
                let arg = self.numeric_arg(call, 0)?;
                let a = col(ARG);
                let s = self.stats(call, arg, vec![min(a.clone()), max(a)]).await?;
                let (lo, hi) = match (s[0], s[1]) {
                    (Some(lo), Some(hi)) => (lo, hi),
                    _ => return Err(Self::no_values(call)),
                };
                let v = x();
                Ok(if hi > lo {
                    format!(
                        "(CASE WHEN {v} IS NULL THEN NULL WHEN {v} <= {lo} THEN 0.0 WHEN {v} >= {hi} THEN 1.0 ELSE ({v} - {lo}) / {w} END)",
                        lo = number(lo),
                        hi = number(hi),
                        w = number(hi - lo)
                    )
                } else {
                    format!("(CASE WHEN {v} IS NULL THEN NULL ELSE 0.0 END)")
                })
            }
            "ml_max_abs_scaler" => {
                call.arity(1, 0, "one numeric expression")?;
                let arg = self.numeric_arg(call, 0)?;
                let a = col(ARG);
                let s = self
                    .stats(
                        call,
                        arg,
                        vec![max(datafusion::functions::math::expr_fn::abs(a))],
                    )
                    .await?;
                let m = s[0].ok_or_else(|| Self::no_values(call))?;
                Ok(if m > 0.0 {
                    format!("({} / {})", x(), number(m))
                } else {
                    format!("({} * 0.0)", x())
                })
            }
            "ml_imputer" => {
                call.arity(
                    2,
                    0,
                    "an expression and a strategy ('mean', 'median' or 'most_frequent')",
                )?;
                let strategy = call
                    .string_arg(1, "the strategy")?
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let a = col(ARG);
                match strategy.as_str() {
                    "mean" | "median" => {
                        let arg = self.numeric_arg(call, 0)?;
                        let agg = if strategy == "mean" {
                            avg(a)
                        } else {
                            median(a)
                        };
                        let s = self.stats(call, arg, vec![agg]).await?;
                        let v = s[0].ok_or_else(|| Self::no_values(call))?;
                        Ok(format!("COALESCE({}, {})", x(), number(v)))
                    }
                    "most_frequent" => {
                        let arg = &call.args[0];
                        let v = self.most_frequent(call, arg).await?;
                        Ok(format!("COALESCE(({arg}), {v})"))
                    }
                    other => Err(err(format!(
                        "{}: unknown strategy '{other}'; use 'mean', 'median' or 'most_frequent'",
                        call.text
                    ))),
                }
            }
            "ml_bucketize" => {
                call.arity(
                    2,
                    1,
                    "an expression, an array of split points and optionally exclude_boundaries",
                )?;
                self.numeric_arg(call, 0)?;
                let mut splits = match &call.args[1] {
                    SqlExpr::Array(a) => a
                        .elem
                        .iter()
                        .map(|e| crate::statement::expr_f64("split points", e))
                        .collect::<Result<Vec<f64>>>()
                        .map_err(|e| err(format!("{}: {e}", call.text)))?,
                    other => {
                        return Err(err(format!(
                            "{}: the split points must be an array of numbers like [0, 10, 100], got {other}",
                            call.text
                        )));
                    }
                };
                if splits.windows(2).any(|w| w[0] >= w[1]) || splits.iter().any(|s| !s.is_finite())
                {
                    return Err(err(format!(
                        "{}: the split points must be finite and strictly increasing",
                        call.text
                    )));
                }
                let exclude = match call.literal(2) {
                    None if call.args.len() < 3 => false,
                    Some(Value::Boolean(b)) => *b,
                    _ => {
                        return Err(err(format!(
                            "{}: exclude_boundaries must be TRUE or FALSE",
                            call.text
                        )));
                    }
                };
                if exclude {
                    if splits.len() < 2 {
                        return Err(err(format!(
                            "{}: exclude_boundaries needs at least two split points",
                            call.text
                        )));
                    }
                    splits = splits[1..splits.len() - 1].to_vec();
                }
                Ok(bucket_case(&x(), &splits))
            }
            "ml_quantile_bucketize" => {
                call.arity(2, 0, "an expression and the number of buckets")?;
                let arg = self.numeric_arg(call, 0)?;
                let n = call
                    .count_arg(1, "the number of buckets", 2)?
                    .expect("arity checked");
                let frame = self
                    .arg_frame(call, arg, Some(DataType::Float64))?
                    .filter(col(ARG).is_not_null())?;
                let data = Dataset::new(frame).with_features([ARG])?;
                let b = QuantileDiscretizer::new()
                    .num_buckets(n)
                    .fit(self.session, &data)
                    .await?;
                let s = &b.splits()[0];
                let inner: Vec<f64> = s[1..s.len() - 1].to_vec();
                Ok(bucket_case(&x(), &inner))
            }
            "ml_label_encoder" => {
                call.arity(
                    1,
                    2,
                    "a string expression, optionally top_k and frequency_threshold",
                )?;
                let top_k = call.count_arg(1, "top_k", 1)?.unwrap_or(DEFAULT_TOP_K);
                let threshold = call
                    .count_arg(2, "frequency_threshold", 0)?
                    .unwrap_or(DEFAULT_FREQUENCY_THRESHOLD);
                let arg = self.string_arg(call, 0)?.clone();
                let cats = self.categories(call, &arg, top_k, threshold).await?;
                if cats.is_empty() {
                    return Ok("CAST(0 AS BIGINT)".to_string());
                }
                let mut sql = format!("(CASE CAST(({arg}) AS VARCHAR)");
                for (i, (c, _)) in cats.iter().enumerate() {
                    sql.push_str(&format!(" WHEN {} THEN {}", string_literal(c), i + 1));
                }
                sql.push_str(" ELSE 0 END)");
                Ok(sql)
            }
            other => Err(err(format!("internal: {other} is not single-valued"))),
        }
    }

    /// The most frequent non-null value of `arg` as a SQL literal (ties: the smallest).
    async fn most_frequent(&self, call: &Call, arg: &SqlExpr) -> Result<String> {
        let t = self.arg_type(call, arg)?;
        let frame = self.arg_frame(call, arg, None)?;
        let batches = frame
            .filter(col(ARG).is_not_null())?
            .aggregate(vec![col(ARG)], vec![count(lit(1)).alias("n")])?
            .sort(vec![
                col("n").sort(false, false),
                col(ARG).sort(true, false),
            ])?
            .limit(0, Some(1))?
            .collect()
            .await?;
        let b = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Self::no_values(call))?;
        let v = ScalarValue::try_from_array(b.column(0), 0)?;
        Ok(match &t {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Dictionary(..) => string_literal(&v.to_string()),
            t if t.is_integer() => v.to_string(),
            t if t.is_floating() => {
                let f = ScalarValue::try_from_array(
                    &arrow::compute::cast(b.column(0), &DataType::Float64)
                        .map_err(QuiverError::from)?,
                    0,
                )?;
                match f {
                    ScalarValue::Float64(Some(f)) => number(f),
                    _ => return Err(Self::no_values(call)),
                }
            }
            DataType::Boolean => v.to_string().to_ascii_uppercase(),
            other => format!(
                "arrow_cast({}, {})",
                string_literal(&v.to_string()),
                string_literal(&other.to_string())
            ),
        })
    }

    /// The kept categories of a string argument, sorted, with their counts.
    async fn categories(
        &self,
        call: &Call,
        arg: &SqlExpr,
        top_k: usize,
        threshold: usize,
    ) -> Result<Vec<(String, u64)>> {
        let frame = self.arg_frame(call, arg, Some(DataType::Utf8))?;
        let batches = frame
            .filter(col(ARG).is_not_null())?
            .aggregate(vec![col(ARG)], vec![count(lit(1)).alias("n")])?
            .collect()
            .await?;
        let mut all: Vec<(String, u64)> = Vec::new();
        for b in &batches {
            let v =
                arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(QuiverError::from)?;
            let n =
                arrow::compute::cast(b.column(1), &DataType::Int64).map_err(QuiverError::from)?;
            let (v, n) = (v.as_string::<i32>(), n.as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                all.push((v.value(i).to_string(), n.value(i) as u64));
            }
        }
        all.retain(|(_, n)| *n as usize >= threshold);
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(top_k);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// The columns of a multi-valued call.
    async fn expand_multi(
        &mut self,
        call: Call,
        alias: Option<String>,
        text: &str,
    ) -> Result<Vec<Item>> {
        let name_of = |parts: &[&str]| -> String {
            let mut n = alias.clone().map(|a| vec![a]).unwrap_or_default();
            n.extend(parts.iter().map(|p| p.to_string()));
            n.join("_")
        };
        let item = |name: String, sql: String| -> Result<Item> {
            Ok(Item {
                name,
                expr: parse_expr(&sql)?,
                text: text.to_string(),
            })
        };
        match call.name.as_str() {
            "ml_one_hot_encoder" => {
                call.arity(
                    1,
                    3,
                    "a string expression, optionally drop, top_k and frequency_threshold",
                )?;
                let drop = call
                    .string_arg(1, "drop")?
                    .unwrap_or_else(|| "none".to_string())
                    .to_ascii_lowercase();
                if drop != "none" && drop != "most_frequent" {
                    return Err(err(format!(
                        "{}: drop must be 'none' or 'most_frequent', got '{drop}'",
                        call.text
                    )));
                }
                let top_k = call.count_arg(2, "top_k", 1)?.unwrap_or(DEFAULT_TOP_K);
                let threshold = call
                    .count_arg(3, "frequency_threshold", 0)?
                    .unwrap_or(DEFAULT_FREQUENCY_THRESHOLD);
                let arg = self.fit_expr(call.args[0].clone(), text).await?;
                self.check_columns(&Item {
                    name: String::new(),
                    expr: arg.clone(),
                    text: text.to_string(),
                })?;
                let inner = Call {
                    args: vec![arg.clone()],
                    ..call
                };
                self.string_arg(&inner, 0)?;
                let mut cats = self.categories(&inner, &arg, top_k, threshold).await?;
                if drop == "most_frequent" {
                    let most = cats
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.1.cmp(&b.1.1).then_with(|| b.1.0.cmp(&a.1.0)))
                        .map(|(i, _)| i);
                    if let Some(i) = most {
                        cats.remove(i);
                    }
                }
                if cats.is_empty() {
                    return Err(err(format!(
                        "{}: no category is kept (each must occur at least {threshold} times in the training rows: frequency_threshold)",
                        inner.text
                    )));
                }
                let base = match (&alias, &arg) {
                    (Some(_), _) => None,
                    (None, SqlExpr::Identifier(i)) => Some(normalized(i)),
                    (None, e) => {
                        return Err(err(format!("{e} needs a name: write … AS name")));
                    }
                };
                cats.into_iter()
                    .map(|(c, _)| {
                        let name = match &base {
                            Some(b) => format!("{b}_{c}"),
                            None => name_of(&[&c]),
                        };
                        item(
                            name,
                            format!(
                                "(CASE WHEN CAST(({arg}) AS VARCHAR) = {} THEN 1.0 ELSE 0.0 END)",
                                string_literal(&c)
                            ),
                        )
                    })
                    .collect()
            }
            "ml_polynomial_expand" | "ml_feature_cross" => {
                let poly = call.name == "ml_polynomial_expand";
                call.arity(1, 1, "STRUCT(field, …) and optionally the degree")?;
                let degree = call
                    .count_arg(1, "the degree", if poly { 1 } else { 2 })?
                    .unwrap_or(2);
                if degree > MAX_DEGREE {
                    return Err(err(format!(
                        "{}: the degree is at most {MAX_DEGREE}, got {degree}",
                        call.text
                    )));
                }
                let fields = self.struct_fields(&call, text).await?;
                if !poly && fields.len() < 2 {
                    return Err(err(format!(
                        "{}: a feature cross needs at least two fields",
                        call.text
                    )));
                }
                for (_, e) in &fields {
                    let one = Call {
                        name: call.name.clone(),
                        args: vec![e.clone()],
                        text: call.text.clone(),
                    };
                    if poly {
                        self.numeric_arg(&one, 0)?;
                    } else {
                        self.string_arg(&one, 0)?;
                    }
                }
                let terms: Vec<Vec<usize>> = if poly {
                    PolynomialExpansion::new(fields.len(), degree).terms()
                } else {
                    combinations(fields.len(), degree)
                };
                terms
                    .into_iter()
                    .map(|t| {
                        let parts: Vec<&str> = t.iter().map(|&j| fields[j].0.as_str()).collect();
                        let sql = if poly {
                            t.iter()
                                .map(|&j| format!("CAST(({}) AS DOUBLE)", fields[j].1))
                                .collect::<Vec<_>>()
                                .join(" * ")
                        } else {
                            t.iter()
                                .map(|&j| format!("CAST(({}) AS VARCHAR)", fields[j].1))
                                .collect::<Vec<_>>()
                                .join(" || '_' || ")
                        };
                        item(name_of(&parts), format!("({sql})"))
                    })
                    .collect()
            }
            other => Err(err(format!("internal: {other} is single-valued"))),
        }
    }

    /// The named, fitted fields of a `STRUCT(a, b AS c, …)` argument.
    async fn struct_fields(&mut self, call: &Call, text: &str) -> Result<Vec<(String, SqlExpr)>> {
        let values = match &call.args[0] {
            SqlExpr::Struct { values, fields } if fields.is_empty() => values.clone(),
            other => {
                return Err(err(format!(
                    "{}: the first argument must be STRUCT(a, b, …), got {other}",
                    call.text
                )));
            }
        };
        if values.is_empty() || values.len() > MAX_STRUCT_FIELDS {
            return Err(err(format!(
                "{}: takes 1 to {MAX_STRUCT_FIELDS} fields",
                call.text
            )));
        }
        let mut out: Vec<(String, SqlExpr)> = Vec::new();
        for v in values {
            let (name, e) = match v {
                SqlExpr::Named { expr, name } => (normalized(&name), *expr),
                SqlExpr::Identifier(i) => (normalized(&i), SqlExpr::Identifier(i)),
                other => {
                    return Err(err(format!(
                        "{}: name the field {other}: STRUCT({other} AS name, …)",
                        call.text
                    )));
                }
            };
            if out.iter().any(|(n, _)| *n == name) {
                return Err(err(format!("{}: field '{name}' is named twice", call.text)));
            }
            self.check_columns(&Item {
                name: name.clone(),
                expr: e.clone(),
                text: text.to_string(),
            })?;
            let e = self.fit_expr(e, text).await?;
            out.push((name, e));
        }
        Ok(out)
    }
}

/// `'bin_1'` below the first split … `'bin_{n+1}'` from the last on; null stays null.
fn bucket_case(x: &str, splits: &[f64]) -> String {
    let mut sql = format!("(CASE WHEN {x} IS NULL THEN NULL");
    for (i, s) in splits.iter().enumerate() {
        sql.push_str(&format!(" WHEN {x} < {} THEN 'bin_{}'", number(*s), i + 1));
    }
    sql.push_str(&format!(" ELSE 'bin_{}' END)", splits.len() + 1));
    sql
}

/// Every combination of 2 … `degree` of `n` indices, by size, then lexicographically.
fn combinations(n: usize, degree: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut level: Vec<Vec<usize>> = (0..n).map(|j| vec![j]).collect();
    for _ in 2..=degree.min(n) {
        level = level
            .iter()
            .flat_map(|t| {
                let last = *t.last().expect("a combination has an index");
                (last + 1..n).map(move |j| {
                    let mut c = t.clone();
                    c.push(j);
                    c
                })
            })
            .collect();
        out.extend(level.iter().cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_by_size() {
        assert_eq!(
            combinations(3, 3),
            vec![vec![0, 1], vec![0, 2], vec![1, 2], vec![0, 1, 2]]
        );
        assert_eq!(combinations(2, 4), vec![vec![0, 1]]);
    }

    #[test]
    fn buckets_and_numbers_read_back() {
        assert_eq!(number(-0.5), "(-0.5)");
        assert_eq!(number(1e-7).parse::<f64>().unwrap(), 1e-7);
        let sql = bucket_case("x", &[0.0, 10.0]);
        assert_eq!(
            sql,
            "(CASE WHEN x IS NULL THEN NULL WHEN x < 0.0 THEN 'bin_1' WHEN x < 10.0 THEN 'bin_2' ELSE 'bin_3' END)"
        );
        assert!(parse_expr(&sql).is_ok());
    }

    #[test]
    fn arrow_types_read_back() {
        use std::str::FromStr;
        for t in [
            DataType::Float64,
            DataType::Int32,
            DataType::Utf8View,
            DataType::Date32,
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into())),
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            DataType::Decimal128(10, 2),
            DataType::Boolean,
        ] {
            assert_eq!(DataType::from_str(&t.to_string()).unwrap(), t, "{t}");
        }
    }
}
