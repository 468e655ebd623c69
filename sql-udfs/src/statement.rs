//! Splitting a SQL script into statements and parsing Quiver's ML statements:
//!
//! ```sql
//! CREATE [OR REPLACE] MODEL [IF NOT EXISTS] name [TRANSFORM (select-list)] OPTIONS (key = value, …) AS SELECT …
//! DROP MODEL [IF EXISTS] name
//! SHOW MODELS
//! DESCRIBE MODEL name
//! ```
//!
//! The script is tokenized once with DataFusion's SQL tokenizer (so semicolons inside strings
//! and comments are not split on); ML statements are parsed with the same parser (option values
//! are SQL expressions, the training query a SQL query), everything else goes to DataFusion's
//! parser unchanged.

use std::collections::BTreeMap;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{Result, SqlError};

/// One statement of a script.
#[derive(Debug, Clone)]
pub enum Statement {
    Ml(MlStatement),
    /// Anything else, for DataFusion.
    Sql(Box<DFStatement>),
}

/// Quiver's ML statements.
#[derive(Debug, Clone, PartialEq)]
pub enum MlStatement {
    CreateModel(CreateModel),
    DropModel { name: String, if_exists: bool },
    ShowModels,
    DescribeModel { name: String },
}

/// `CREATE MODEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateModel {
    pub name: String,
    pub or_replace: bool,
    pub if_not_exists: bool,
    /// The `TRANSFORM` clause's select list, as written.
    pub transform: Option<Vec<SelectItem>>,
    /// Option names lower-cased, in the order written.
    pub options: Vec<(String, Expr)>,
    pub query: Box<Query>,
}

impl CreateModel {
    /// The options by name; a name given twice is an error.
    pub fn option_map(&self) -> Result<BTreeMap<String, Expr>> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.options {
            if out.insert(k.clone(), v.clone()).is_some() {
                return Err(SqlError::InvalidOption {
                    option: k.clone(),
                    reason: "given more than once".to_string(),
                });
            }
        }
        Ok(out)
    }
}

/// Splits `sql` into statements and parses each.
pub fn parse_script(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    for t in tokens.into_iter().chain([TokenWithSpan::new_eof()]) {
        match t.token {
            Token::SemiColon | Token::EOF => {
                if current
                    .iter()
                    .any(|t| !matches!(t.token, Token::Whitespace(_)))
                {
                    out.push(parse_statement(std::mem::take(&mut current))?);
                }
                current.clear();
            }
            _ => current.push(t),
        }
    }
    Ok(out)
}

/// The words that start the statement, upper-cased (whitespace and comments skipped).
fn leading_words(tokens: &[TokenWithSpan], n: usize) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .take(n)
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

fn parse_statement(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let words = leading_words(&tokens, 4);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let is_ml = matches!(
        w.as_slice(),
        ["CREATE", "MODEL", ..]
            | ["CREATE", "OR", "REPLACE", "MODEL"]
            | ["DROP", "MODEL", ..]
            | ["SHOW", "MODELS", ..]
            | ["DESCRIBE", "MODEL", ..]
    );
    if is_ml {
        return Ok(Statement::Ml(parse_ml(tokens)?));
    }
    // Not ours: DataFusion parses the statement's own text.
    let text: String = tokens.iter().map(|t| t.token.to_string()).collect();
    let mut statements = DFParser::parse_sql(&text).map_err(|e| SqlError::Parse(e.to_string()))?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => Ok(Statement::Sql(Box::new(s))),
        _ => Err(SqlError::Parse(format!(
            "expected one statement in: {}",
            text.trim()
        ))),
    }
}

/// Consumes the next token if it is the (unquoted) word `word`.
fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    match &p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word) => {
            p.next_token();
            true
        }
        _ => false,
    }
}

fn expect_word(p: &mut Parser<'_>, word: &str) -> Result<()> {
    if parse_word(p, word) {
        Ok(())
    } else {
        Err(SqlError::Parse(format!(
            "expected {word}, found {}",
            p.peek_token().token
        )))
    }
}

fn parse_ml(tokens: Vec<TokenWithSpan>) -> Result<MlStatement> {
    let dialect = GenericDialect {};
    let mut p = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let perr = |e: datafusion::sql::sqlparser::parser::ParserError| SqlError::Parse(e.to_string());
    let name = |p: &mut Parser<'_>| -> Result<String> {
        let ident = p.parse_identifier().map_err(perr)?;
        Ok(ident.value)
    };
    let statement = if p.parse_keyword(Keyword::CREATE) {
        let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        expect_word(&mut p, "MODEL")?;
        let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        if or_replace && if_not_exists {
            return Err(SqlError::Parse(
                "CREATE OR REPLACE MODEL and IF NOT EXISTS cannot be combined".to_string(),
            ));
        }
        let model = name(&mut p)?;
        let transform = if parse_word(&mut p, "TRANSFORM") {
            p.expect_token(&Token::LParen).map_err(perr)?;
            let items = p.parse_projection().map_err(perr)?;
            p.expect_token(&Token::RParen).map_err(perr)?;
            Some(items)
        } else {
            None
        };
        let mut options = Vec::new();
        if p.parse_keyword(Keyword::OPTIONS) {
            p.expect_token(&Token::LParen).map_err(perr)?;
            if !p.consume_token(&Token::RParen) {
                loop {
                    let key = p
                        .parse_identifier()
                        .map_err(perr)?
                        .value
                        .to_ascii_lowercase();
                    p.expect_token(&Token::Eq).map_err(perr)?;
                    let value = p.parse_expr().map_err(perr)?;
                    options.push((key, value));
                    if p.consume_token(&Token::RParen) {
                        break;
                    }
                    p.expect_token(&Token::Comma).map_err(perr)?;
                }
            }
        }
        p.expect_keyword(Keyword::AS).map_err(perr)?;
        let query = p.parse_query().map_err(perr)?;
        MlStatement::CreateModel(CreateModel {
            name: model,
            or_replace,
            if_not_exists,
            transform,
            options,
            query,
        })
    } else if p.parse_keyword(Keyword::DROP) {
        expect_word(&mut p, "MODEL")?;
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        MlStatement::DropModel {
            name: name(&mut p)?,
            if_exists,
        }
    } else if p.parse_keyword(Keyword::SHOW) {
        expect_word(&mut p, "MODELS")?;
        MlStatement::ShowModels
    } else {
        p.expect_keyword(Keyword::DESCRIBE).map_err(perr)?;
        expect_word(&mut p, "MODEL")?;
        MlStatement::DescribeModel {
            name: name(&mut p)?,
        }
    };
    let rest = p.peek_token();
    if rest.token != Token::EOF {
        return Err(SqlError::Parse(format!(
            "unexpected {} after the statement (line {}, column {})",
            rest.token, rest.span.start.line, rest.span.start.column
        )));
    }
    Ok(statement)
}

/// An option value as a string (a string literal or a bare word).
pub fn expr_str(option: &str, e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
            other => Err(invalid(option, format!("expects a string, got {other}"))),
        },
        Expr::Identifier(i) => Ok(i.value.clone()),
        other => Err(invalid(option, format!("expects a string, got {other}"))),
    }
}

/// An option value as a number.
pub fn expr_f64(option: &str, e: &Expr) -> Result<f64> {
    let parsed = match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<f64>().ok(),
            _ => None,
        },
        Expr::UnaryOp { op, expr } if op.to_string() == "-" => {
            return expr_f64(option, expr).map(|v| -v);
        }
        _ => None,
    };
    parsed.ok_or_else(|| invalid(option, format!("expects a number, got {e}")))
}

/// An option value as a non-negative integer.
pub fn expr_usize(option: &str, e: &Expr) -> Result<usize> {
    let v = expr_f64(option, e)?;
    if v >= 0.0 && v.fract() == 0.0 && v < 1e15 {
        Ok(v as usize)
    } else {
        Err(invalid(
            option,
            format!("expects a whole number ≥ 0, got {e}"),
        ))
    }
}

/// An option value as a boolean.
pub fn expr_bool(option: &str, e: &Expr) -> Result<bool> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Ok(*b),
            _ => Err(invalid(option, format!("expects TRUE or FALSE, got {e}"))),
        },
        _ => Err(invalid(option, format!("expects TRUE or FALSE, got {e}"))),
    }
}

/// An option value as a list of strings: `['a', 'b']` (a single string is a list of one).
pub fn expr_str_list(option: &str, e: &Expr) -> Result<Vec<String>> {
    match e {
        Expr::Array(a) => a.elem.iter().map(|x| expr_str(option, x)).collect(),
        other => Ok(vec![expr_str(option, other)?]),
    }
}

/// An option value as JSON (strings, numbers, booleans, lists; other expressions as their SQL).
pub fn expr_json(e: &Expr) -> serde_json::Value {
    use serde_json::Value as J;
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => J::String(s.clone()),
            Value::Number(n, _) => n
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| J::String(n.to_string()), J::Number),
            Value::Boolean(b) => J::Bool(*b),
            other => J::String(other.to_string()),
        },
        Expr::UnaryOp { .. } => expr_f64("", e)
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| J::String(e.to_string()), J::Number),
        Expr::Array(a) => J::Array(a.elem.iter().map(expr_json).collect()),
        Expr::Identifier(i) => J::String(i.value.clone()),
        other => J::String(other.to_string()),
    }
}

fn invalid(option: &str, reason: String) -> SqlError {
    SqlError::InvalidOption {
        option: option.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_parses_a_mixed_script() {
        let script = "SELECT ';' AS s; -- a comment; with a semicolon\n\
             CREATE OR REPLACE MODEL m OPTIONS (model_type = 'linear_reg', input_label_cols = ['y'], max_iterations = 5, l2_reg = -0.5, fit_intercept = false) AS SELECT a, y FROM t WHERE a > 1;\n\
             drop model if exists m; SHOW MODELS; describe model \"M2\"";
        let s = parse_script(script).unwrap();
        assert_eq!(s.len(), 5, "{s:?}");
        assert!(matches!(&s[0], Statement::Sql(_)));
        let Statement::Ml(MlStatement::CreateModel(c)) = &s[1] else {
            panic!("{:?}", s[1]);
        };
        assert_eq!(c.name, "m");
        assert!(c.or_replace && !c.if_not_exists);
        let o = c.option_map().unwrap();
        assert_eq!(
            expr_str("model_type", &o["model_type"]).unwrap(),
            "linear_reg"
        );
        assert_eq!(
            expr_str_list("x", &o["input_label_cols"]).unwrap(),
            vec!["y"]
        );
        assert_eq!(expr_usize("x", &o["max_iterations"]).unwrap(), 5);
        assert_eq!(expr_f64("x", &o["l2_reg"]).unwrap(), -0.5);
        assert!(!expr_bool("x", &o["fit_intercept"]).unwrap());
        assert_eq!(c.query.to_string(), "SELECT a, y FROM t WHERE a > 1");
        assert_eq!(
            s[2..]
                .iter()
                .map(|s| match s {
                    Statement::Ml(m) => m.clone(),
                    _ => panic!(),
                })
                .collect::<Vec<_>>(),
            vec![
                MlStatement::DropModel {
                    name: "m".to_string(),
                    if_exists: true
                },
                MlStatement::ShowModels,
                MlStatement::DescribeModel {
                    name: "M2".to_string()
                },
            ]
        );
    }

    #[test]
    fn bad_statements_are_named() {
        let err = parse_script("CREATE MODEL m OPTIONS (a = 1) SELECT 1").unwrap_err();
        assert!(err.to_string().contains("AS"), "{err}");
        let err = parse_script("CREATE MODEL m OPTIONS (a = 1, a = 2) AS SELECT 1").unwrap();
        let Statement::Ml(MlStatement::CreateModel(c)) = &err[0] else {
            panic!()
        };
        assert!(c.option_map().unwrap_err().to_string().contains("'a'"));
        let err = parse_script("DROP MODEL m extra").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = parse_script("SHOW MODELS; CREATE OR REPLACE MODEL IF NOT EXISTS m AS SELECT 1")
            .unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
        let o = Expr::value(Value::Number("1.5".into(), false));
        assert!(
            expr_usize("max_iterations", &o)
                .unwrap_err()
                .to_string()
                .contains("max_iterations")
        );
    }
}
