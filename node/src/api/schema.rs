//! JSON Schema validation of published values, one piece of code for the
//! gRPC service and the HTTP gateway.
//!
//! A topic's schema is compiled once per topic version and cached on the
//! node, never per message. Compiling and validating run on tokio's blocking
//! threads, at most one per CPU at a time, so neither a costly schema nor a
//! flood of publishes can hold the async workers or grow the blocking pool
//! without bound. Regular expressions (`pattern`, `patternProperties`) run
//! under a backtracking and size budget, so a catastrophic pattern fails
//! its match instead of burning CPU.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use jsonschema::PatternOptions;
use jsonschema::Validator;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::model::TopicId;
use crate::raft::types::Topic;

/// The largest schema a topic may be given, in bytes of JSON text: the
/// metadata group replicates it and every node compiles it.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Backtracking steps one regular expression match may take. fancy-regex
/// backtracks only where a pattern needs it (look-around, backreferences)
/// and runs the rest on the linear-time `regex` engine; this is a tenth of
/// its default, plenty for patterns that do not explode.
const REGEX_BACKTRACK_LIMIT: usize = 100_000;
/// The compiled size of one pattern: a short pattern such as `\w{1000}{1000}`
/// otherwise expands to the engine's 10 MiB default.
const REGEX_SIZE_LIMIT_BYTES: usize = 1024 * 1024;
/// The lazy DFA cache of one pattern (the engine's default is 2 MiB).
const REGEX_DFA_SIZE_LIMIT_BYTES: usize = 1024 * 1024;
/// At most this many failing paths are named in one error.
const MAX_REPORTED_ERRORS: usize = 10;
/// Compiled schemas kept. Entries of deleted topics are never looked up
/// again; past this bound the cache starts afresh rather than keep them.
const MAX_CACHED_SCHEMAS: usize = 1024;

/// Why a schema document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaDocumentError {
    #[error("schema is {bytes} bytes; the limit is {MAX_SCHEMA_BYTES}")]
    TooLarge { bytes: usize },
    #[error("schema is not valid JSON: {0}")]
    NotJson(String),
    #[error("schema does not compile: {0}")]
    DoesNotCompile(String),
}

/// Why values are refused for a topic, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("record {index}: the topic has a JSON Schema and the value is not JSON: {reason}")]
    NotJson { index: usize, reason: String },
    #[error("record {index}: the value does not match the topic's schema: {failures}")]
    Mismatch { index: usize, failures: String },
    /// A schema accepted under older rules that no longer compiles.
    #[error("the schema of topic {topic} no longer compiles ({source}); update the topic's schema")]
    StoredSchema {
        topic: String,
        source: SchemaDocumentError,
    },
    #[error("schema validation did not finish: {0}")]
    Interrupted(String),
}

/// One version of a topic's schema. Topic ids are never reused and every
/// topic update raises its version, so the pair names one schema text.
#[derive(Debug, Clone, Copy)]
pub struct TopicSchema<'a> {
    pub topic_id: TopicId,
    pub version: u64,
    pub topic_name: &'a str,
    pub schema: &'a str,
}

impl<'a> TopicSchema<'a> {
    /// The topic's schema; `None` when it has none.
    pub fn of(topic: &'a Topic) -> Option<TopicSchema<'a>> {
        Some(TopicSchema {
            topic_id: topic.id,
            version: topic.version,
            topic_name: &topic.name,
            schema: topic.schema.as_deref()?,
        })
    }
}

/// Compiles a schema document (drafts 7 and 2020-12, detected from
/// `$schema`; 2020-12 when absent) with the regular expression budget.
/// Without the `resolve-http`/`resolve-file` features, remote `$ref`s are
/// never fetched.
pub fn compile(schema: &str) -> Result<Validator, SchemaDocumentError> {
    let document: Value =
        serde_json::from_str(schema).map_err(|e| SchemaDocumentError::NotJson(e.to_string()))?;
    let patterns = PatternOptions::fancy_regex()
        .backtrack_limit(REGEX_BACKTRACK_LIMIT)
        .size_limit(REGEX_SIZE_LIMIT_BYTES)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT_BYTES);
    jsonschema::options()
        .with_pattern_options(patterns)
        .build(&document)
        .map_err(|e| SchemaDocumentError::DoesNotCompile(e.to_string()))
}

/// What `value` fails, naming each failing path; `None` when it passes.
/// Runs on the calling thread: async code goes through `SchemaCache`.
pub fn failures(validator: &Validator, value: &Value) -> Option<String> {
    let failures: Vec<String> = validator
        .iter_errors(value)
        .take(MAX_REPORTED_ERRORS)
        .map(|e| {
            let path = e.instance_path().as_str();
            format!("{}: {e}", if path.is_empty() { "/" } else { path })
        })
        .collect();
    (!failures.is_empty()).then(|| failures.join("; "))
}

/// The node's compiled schemas and its bound on validations running at once.
pub struct SchemaCache {
    /// Topic id → (topic version, compiled schema).
    compiled: Mutex<HashMap<TopicId, (u64, Arc<Validator>)>>,
    /// One permit per validation or compilation running on a blocking thread.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache")
            .field("topics", &self.compiled.lock().len())
            .field("idle_permits", &self.permits.available_permits())
            .finish()
    }
}

impl Default for SchemaCache {
    /// As many validations at once as the machine has CPUs: the work is
    /// CPU-bound, so more would only queue on the cores.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, NonZeroUsize::get);
        SchemaCache::with_parallelism(cpus)
    }
}

/// A schema to validate with: compiled already, or its text.
enum Source {
    Compiled(Arc<Validator>),
    Text(String),
}

impl SchemaCache {
    /// At most `max_running` (at least one) validations or compilations
    /// run at once; further ones wait for a permit.
    pub fn with_parallelism(max_running: usize) -> SchemaCache {
        SchemaCache {
            compiled: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_running.max(1))),
        }
    }

    /// Checks a schema offered for a topic: bounded in size, and compiling.
    pub async fn check_document(&self, schema: &str) -> Result<(), SchemaDocumentError> {
        if schema.len() > MAX_SCHEMA_BYTES {
            return Err(SchemaDocumentError::TooLarge {
                bytes: schema.len(),
            });
        }
        let schema = schema.to_owned();
        self.off_the_runtime(move || compile(&schema).map(drop))
            .await
            .unwrap_or_else(|stopped| Err(SchemaDocumentError::DoesNotCompile(stopped)))
    }

    /// Checks every value, as a publish that is refused whole when one
    /// record fails: the first failing record's error.
    pub async fn check_all(
        &self,
        topic: TopicSchema<'_>,
        values: Vec<Bytes>,
    ) -> Result<(), SchemaError> {
        self.with_validator(topic, move |validator| {
            for (index, value) in values.iter().enumerate() {
                let value: Value =
                    serde_json::from_slice(value).map_err(|e| SchemaError::NotJson {
                        index,
                        reason: e.to_string(),
                    })?;
                if let Some(failures) = failures(validator, &value) {
                    return Err(SchemaError::Mismatch { index, failures });
                }
            }
            Ok(())
        })
        .await
    }

    /// Checks each value on its own, as a publish whose items succeed or
    /// fail one by one: the values back, and each one's failures.
    pub async fn check_each(
        &self,
        topic: TopicSchema<'_>,
        values: Vec<Value>,
    ) -> Result<(Vec<Value>, Vec<Option<String>>), SchemaError> {
        self.with_validator(topic, move |validator| {
            let outcomes = values.iter().map(|v| failures(validator, v)).collect();
            Ok((values, outcomes))
        })
        .await
    }

    /// Runs `work` with the topic's compiled schema on a blocking thread,
    /// compiling the schema there first when this version is not cached.
    async fn with_validator<T, W>(&self, topic: TopicSchema<'_>, work: W) -> Result<T, SchemaError>
    where
        T: Send + 'static,
        W: FnOnce(&Validator) -> Result<T, SchemaError> + Send + 'static,
    {
        let source = match self.cached(topic.topic_id, topic.version) {
            Some(validator) => Source::Compiled(validator),
            None => Source::Text(topic.schema.to_owned()),
        };
        let topic_name = topic.topic_name.to_owned();
        let (validator, outcome) = self
            .off_the_runtime(move || {
                let validator = match source {
                    Source::Compiled(validator) => validator,
                    Source::Text(text) => {
                        Arc::new(compile(&text).map_err(|source| SchemaError::StoredSchema {
                            topic: topic_name,
                            source,
                        })?)
                    }
                };
                let outcome = work(&validator);
                Ok((validator, outcome))
            })
            .await
            .map_err(SchemaError::Interrupted)??;
        self.remember(topic.topic_id, topic.version, validator);
        outcome
    }

    /// Runs `work` on a blocking thread once a permit is free; `Err` says
    /// why it did not run to the end.
    async fn off_the_runtime<T, W>(&self, work: W) -> Result<T, String>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            // Held until the work ends, even when the caller has gone away
            // meanwhile, so the bound counts every thread still working.
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| e.to_string())
    }

    fn cached(&self, topic_id: TopicId, version: u64) -> Option<Arc<Validator>> {
        match self.compiled.lock().get(&topic_id) {
            Some((cached_version, validator)) if *cached_version == version => {
                Some(validator.clone())
            }
            _ => None,
        }
    }

    fn remember(&self, topic_id: TopicId, version: u64, validator: Arc<Validator>) {
        let mut compiled = self.compiled.lock();
        // A request that read older metadata must not evict a newer version.
        if compiled
            .get(&topic_id)
            .is_some_and(|(cached_version, _)| *cached_version >= version)
        {
            return;
        }
        if compiled.len() >= MAX_CACHED_SCHEMAS && !compiled.contains_key(&topic_id) {
            compiled.clear();
        }
        compiled.insert(topic_id, (version, validator));
    }

    #[cfg(test)]
    fn cached_count(&self) -> usize {
        self.compiled.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topic_schema(version: u64, schema: &str) -> TopicSchema<'_> {
        TopicSchema {
            topic_id: TopicId(1),
            version,
            topic_name: "t",
            schema,
        }
    }

    fn values(texts: &[&str]) -> Vec<Bytes> {
        texts
            .iter()
            .map(|t| Bytes::copy_from_slice(t.as_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn payloads_are_checked_and_failing_paths_named() {
        let cache = SchemaCache::default();
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["name"]})
            .to_string();
        let (_, outcomes) = cache
            .check_each(
                topic_schema(1, &schema),
                vec![json!({"name": "a", "age": 3}), json!({"age": "x"})],
            )
            .await
            .unwrap();
        assert_eq!(outcomes[0], None);
        let failures = outcomes[1].as_deref().unwrap();
        assert!(failures.contains("/age"), "{failures}");
        assert!(failures.contains("name"), "{failures}");
    }

    #[test]
    fn draft7_and_2020_12_schemas_compile_and_bad_ones_do_not() {
        compile(r#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}"#)
            .unwrap();
        compile(r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#)
            .unwrap();
        assert!(matches!(
            compile(r#"{"type": 12}"#),
            Err(SchemaDocumentError::DoesNotCompile(_))
        ));
        assert!(matches!(compile("{"), Err(SchemaDocumentError::NotJson(_))));
    }

    #[tokio::test]
    async fn one_compilation_per_schema_version() {
        let cache = SchemaCache::default();
        let v1 = json!({"type": "object"}).to_string();
        for _ in 0..3 {
            cache
                .check_all(topic_schema(1, &v1), values(&["{}"]))
                .await
                .unwrap();
        }
        assert_eq!(cache.cached_count(), 1);
        let v2 = json!({"type": "object", "required": ["x"]}).to_string();
        assert!(
            cache
                .check_all(topic_schema(2, &v2), values(&["{}"]))
                .await
                .is_err(),
            "a new version replaces the cached one"
        );
        assert_eq!(cache.cached_count(), 1);
    }

    #[tokio::test]
    async fn a_value_that_is_not_json_is_refused_with_its_record_index() {
        let cache = SchemaCache::default();
        let schema = json!({"type": "object"}).to_string();
        let err = cache
            .check_all(topic_schema(1, &schema), values(&["{}", "not json", "{}"]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchemaError::NotJson { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("record 1: "), "{err}");
    }

    #[tokio::test]
    async fn a_schema_violation_names_the_record_index_and_the_failing_path() {
        let cache = SchemaCache::default();
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}}).to_string();
        let err = cache
            .check_all(
                topic_schema(1, &schema),
                values(&[r#"{"n": 1}"#, r#"{"n": 2}"#, r#"{"n": "three"}"#]),
            )
            .await
            .unwrap_err();
        let SchemaError::Mismatch { index, failures } = &err else {
            panic!("expected a mismatch, got {err}");
        };
        assert_eq!(*index, 2);
        assert!(failures.contains("/n"), "{failures}");
        assert!(err.to_string().starts_with("record 2: "), "{err}");
    }

    #[test]
    fn a_nested_quantifier_runs_on_the_linear_engine_and_simply_does_not_match() {
        let validator = compile(r#"{"type": "string", "pattern": "^(a+)+$"}"#).unwrap();
        // Exponential for a backtracking matcher: 2^4096 ways to split the
        // a's before the final character fails every one of them.
        let subject = format!("{}!", "a".repeat(4096));
        let failures = failures(&validator, &Value::String(subject)).unwrap();
        assert!(failures.contains("does not match"), "{failures}");
    }

    #[test]
    fn a_catastrophic_backtracking_pattern_stops_at_the_budget() {
        // The backreference forces fancy-regex's backtracking matcher onto
        // the nested quantifier, whose paths double with every `a`; without
        // the budget, 64 of them would outlast the test run by far.
        let validator = compile(r#"{"type": "string", "pattern": "^(a+)+\\1$"}"#).unwrap();
        let subject = format!("{}!", "a".repeat(64));
        let failures = failures(&validator, &Value::String(subject)).unwrap();
        assert!(failures.to_lowercase().contains("backtrack"), "{failures}");
    }

    #[tokio::test]
    async fn a_schema_over_the_size_limit_is_refused_before_it_is_compiled() {
        let cache = SchemaCache::default();
        let description = "x".repeat(MAX_SCHEMA_BYTES);
        let schema = json!({"description": description}).to_string();
        assert_eq!(
            cache.check_document(&schema).await,
            Err(SchemaDocumentError::TooLarge {
                bytes: schema.len()
            })
        );
        cache.check_document(r#"{"type": "object"}"#).await.unwrap();
        assert!(matches!(
            cache.check_document(r#"{"type": 12}"#).await,
            Err(SchemaDocumentError::DoesNotCompile(_))
        ));
    }

    #[tokio::test]
    async fn a_stored_schema_that_does_not_compile_is_reported_not_a_panic() {
        let cache = SchemaCache::default();
        let err = cache
            .check_all(topic_schema(1, r#"{"type": 12}"#), values(&["{}"]))
            .await
            .unwrap_err();
        assert!(matches!(err, SchemaError::StoredSchema { .. }), "{err}");
    }

    #[tokio::test]
    async fn concurrent_validations_share_a_bounded_number_of_threads() {
        let cache = Arc::new(SchemaCache::with_parallelism(1));
        let schema = json!({"type": "object"}).to_string();
        let checks = (0..16).map(|_| {
            let (cache, schema) = (cache.clone(), schema.clone());
            tokio::spawn(async move {
                cache
                    .check_all(topic_schema(1, &schema), values(&["{}"]))
                    .await
            })
        });
        for check in futures::future::join_all(checks).await {
            check.unwrap().unwrap();
        }
        assert_eq!(
            cache.permits.available_permits(),
            1,
            "every permit returned"
        );
    }
}
