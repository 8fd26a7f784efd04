//! JSON Schema validation of published payloads, compiled once per schema
//! version and cached, never per message.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use jsonschema::Validator;
use parking_lot::Mutex;
use raftstream_proto::v1 as pb;
use serde_json::Value;

use super::ApiError;

/// At most this many failing paths are named in one error.
const MAX_REPORTED_ERRORS: usize = 10;

/// Compiles a schema document (drafts 7 and 2020-12, detected from
/// `$schema`; 2020-12 when absent).
pub fn compile(schema: &str) -> Result<Validator, String> {
    let document: Value =
        serde_json::from_str(schema).map_err(|e| format!("schema is not valid JSON: {e}"))?;
    jsonschema::validator_for(&document).map_err(|e| format!("schema does not compile: {e}"))
}

#[derive(Default)]
pub struct SchemaCache {
    /// Topic id → (topic version, compiled schema).
    compiled: Mutex<HashMap<u64, (u64, Arc<Validator>)>>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache")
            .field("topics", &self.compiled.lock().len())
            .finish()
    }
}

impl SchemaCache {
    fn validator(&self, topic: &pb::Topic, schema: &str) -> Result<Arc<Validator>, ApiError> {
        if let Some((version, validator)) = self.compiled.lock().get(&topic.id)
            && *version == topic.version
        {
            return Ok(validator.clone());
        }
        // A stored schema compiled when it was accepted; failing now means
        // it was stored by another path (gRPC): report it, do not panic.
        let validator = Arc::new(compile(schema).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_topic_schema",
                format!("topic {}: {e}", topic.name),
            )
        })?);
        self.compiled
            .lock()
            .insert(topic.id, (topic.version, validator.clone()));
        Ok(validator)
    }

    /// Validates a payload against the topic's schema, if it has one.
    pub fn validate(&self, topic: &pb::Topic, payload: &Value) -> Result<(), ApiError> {
        let Some(schema) = topic.schema.as_deref() else {
            return Ok(());
        };
        let validator = self.validator(topic, schema)?;
        let failures: Vec<String> = validator
            .iter_errors(payload)
            .take(MAX_REPORTED_ERRORS)
            .map(|e| {
                let path = e.instance_path().as_str();
                format!("{}: {e}", if path.is_empty() { "/" } else { path })
            })
            .collect();
        if failures.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "schema_mismatch",
            format!(
                "the payload does not match the topic's schema: {}",
                failures.join("; ")
            ),
        ))
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.compiled.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topic(version: u64, schema: Value) -> pb::Topic {
        pb::Topic {
            id: 1,
            name: "t".into(),
            schema: Some(schema.to_string()),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn payloads_are_checked_and_failing_paths_named() {
        let cache = SchemaCache::default();
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["name"]});
        let t = topic(1, schema);
        cache.validate(&t, &json!({"name": "a", "age": 3})).unwrap();
        let err = cache.validate(&t, &json!({"age": "x"})).unwrap_err();
        assert_eq!(err.code, "schema_mismatch");
        assert!(err.message.contains("/age"), "{}", err.message);
        assert!(err.message.contains("name"), "{}", err.message);
    }

    #[test]
    fn draft7_and_2020_12_schemas_compile_and_bad_ones_do_not() {
        compile(r#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}"#)
            .unwrap();
        compile(r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#)
            .unwrap();
        assert!(compile(r#"{"type": 12}"#).is_err());
        assert!(compile("{").is_err());
    }

    #[test]
    fn one_compilation_per_schema_version() {
        let cache = SchemaCache::default();
        let v1 = topic(1, json!({"type": "object"}));
        for _ in 0..3 {
            cache.validate(&v1, &json!({})).unwrap();
        }
        assert_eq!(cache.cached(), 1);
        let v2 = topic(2, json!({"type": "object", "required": ["x"]}));
        assert!(
            cache.validate(&v2, &json!({})).is_err(),
            "a new version replaces the cached one"
        );
    }
}
