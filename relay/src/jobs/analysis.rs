//! What a job asks the model, per analysis type, and how its answers are read: a prompt for each
//! piece of the document (the map step) and, for summaries and answers to a question, one that
//! combines the pieces' answers (the reduce step); an extraction's JSON objects are merged field
//! by field and a classification's labels by vote, without another call.

use fm_protocol::{AnalysisType, JobRequest};
use serde_json::{Map, Value};

use crate::error::RelayError;

/// The instruction models (and fm-sim) follow to answer with a JSON object of these keys.
pub const JSON_KEYS_INSTRUCTION: &str = "Answer with one JSON object with exactly these keys: ";
/// The instruction to answer with one of these labels.
pub const LABELS_INSTRUCTION: &str = "Answer with exactly one of these labels: ";
/// How the keys and labels of those instructions are separated.
pub const LIST_SEPARATOR: &str = " | ";

/// A job's analysis, with what it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Analysis {
    Summarize,
    Extract { fields: Vec<String> },
    Classify { labels: Vec<String> },
    Qa { question: String },
}

impl Analysis {
    /// The analysis a validated request asks for.
    pub fn of(request: &JobRequest) -> Analysis {
        match request.analysis_type {
            Some(AnalysisType::Extract) => {
                let mut fields = request.fields.clone();
                if let Some(properties) = request
                    .schema
                    .as_ref()
                    .and_then(|schema| schema.get("properties"))
                    .and_then(Value::as_object)
                {
                    for name in properties.keys() {
                        if !fields.contains(name) {
                            fields.push(name.clone());
                        }
                    }
                }
                Analysis::Extract { fields }
            }
            Some(AnalysisType::Classify) => Analysis::Classify {
                labels: request.labels.clone(),
            },
            Some(AnalysisType::Qa) => Analysis::Qa {
                question: request.question.clone().unwrap_or_default(),
            },
            Some(AnalysisType::Summarize) | None => Analysis::Summarize,
        }
    }

    /// Whether answers of several pieces are combined by another model call.
    pub fn reduces_by_call(&self) -> bool {
        matches!(self, Analysis::Summarize | Analysis::Qa { .. })
    }

    /// The system prompt and the user message of the map step for `piece` (`index` of `count`).
    pub fn map_prompt(&self, piece: &str, index: usize, count: usize) -> (String, String) {
        let whole = count == 1;
        let part = match whole {
            true => "the document below".to_string(),
            false => format!("part {} of {count} of a document, below", index + 1),
        };
        let system = match self {
            Analysis::Summarize => format!(
                "You summarize documents. Summarize {part}: its main points, facts and \
                 conclusions, in a few short paragraphs."
            ),
            Analysis::Qa { question } => format!(
                "You answer questions about documents, from the document alone. Answer the \
                 question from {part}. When it does not say, answer that it does not say.\n\
                 Question: {question}"
            ),
            Analysis::Extract { fields } => format!(
                "You read fields out of documents. Read these fields from {part}: {}. Use null \
                 for a field it does not give.\n{JSON_KEYS_INSTRUCTION}{}",
                fields.join(", "),
                fields.join(LIST_SEPARATOR)
            ),
            Analysis::Classify { labels } => format!(
                "You classify documents. Choose the label that fits {part} best.\n\
                 {LABELS_INSTRUCTION}{}",
                labels.join(LIST_SEPARATOR)
            ),
        };
        (system, piece.to_string())
    }

    /// The system prompt and the user message that combine `notes` (answers of consecutive
    /// pieces) into one.
    pub fn reduce_prompt(&self, notes: &[String]) -> (String, String) {
        let system = match self {
            Analysis::Qa { question } => format!(
                "You answer questions about documents. Below are answers to the question, each \
                 from one part of the same document, in order. Combine them into one answer to \
                 the question, from what the parts say.\nQuestion: {question}"
            ),
            _ => "You summarize documents. Below are summaries of consecutive parts of one \
                  document, in order. Combine them into one summary of the whole document."
                .to_string(),
        };
        let user = notes
            .iter()
            .enumerate()
            .map(|(index, note)| format!("Part {}:\n{note}", index + 1))
            .collect::<Vec<_>>()
            .join("\n\n");
        (system, user)
    }
}

/// An extraction's answer as a JSON object of the asked `fields` (absent ones null).
pub fn read_fields(answer: &str, fields: &[String]) -> Result<Map<String, Value>, RelayError> {
    let unusable = || RelayError::UnusableAnswer {
        expected: "a JSON object of the fields",
    };
    let start = answer.find('{').ok_or_else(unusable)?;
    let end = answer.rfind('}').ok_or_else(unusable)?;
    let object: Map<String, Value> = answer
        .get(start..=end)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(unusable)?;
    Ok(fields
        .iter()
        .map(|field| {
            let value = object.get(field).cloned().unwrap_or(Value::Null);
            (field.clone(), value)
        })
        .collect())
}

/// Several pieces' extractions as one: each field's first value that is not null, in document
/// order.
pub fn merge_fields(parts: Vec<Map<String, Value>>, fields: &[String]) -> Map<String, Value> {
    fields
        .iter()
        .map(|field| {
            let value = parts
                .iter()
                .filter_map(|part| part.get(field))
                .find(|value| !value.is_null())
                .cloned()
                .unwrap_or(Value::Null);
            (field.clone(), value)
        })
        .collect()
}

/// The label a classification's answer names: the one it is (ignoring case, quotes and a final
/// full stop), else the only one it contains.
pub fn read_label(answer: &str, labels: &[String]) -> Result<String, RelayError> {
    let cleaned = answer
        .trim()
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '`')
        .trim_end_matches('.')
        .trim();
    if let Some(label) = labels.iter().find(|l| l.eq_ignore_ascii_case(cleaned)) {
        return Ok(label.clone());
    }
    let lower = answer.to_lowercase();
    let named: Vec<&String> = labels
        .iter()
        .filter(|label| lower.contains(&label.to_lowercase()))
        .collect();
    match named.as_slice() {
        [only] => Ok((*only).clone()),
        _ => Err(RelayError::UnusableAnswer {
            expected: "one of the labels",
        }),
    }
}

/// The label most pieces got; a tie goes to the label listed first.
pub fn vote(chosen: &[String], labels: &[String]) -> String {
    labels
        .iter()
        .max_by_key(|label| {
            let votes = chosen.iter().filter(|c| c == label).count();
            // Earlier labels win ties: rank them higher.
            let order = labels.len() - labels.iter().position(|l| l == *label).unwrap_or(0);
            (votes, order)
        })
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_are_read_from_the_json_in_an_answer_and_merged_in_order() {
        let fields = strings(&["party", "date"]);
        let first = read_fields(
            "Here: {\"party\": null, \"date\": \"2026-01-02\", \"x\": 1}",
            &fields,
        )
        .unwrap();
        assert_eq!(
            Value::Object(first.clone()),
            serde_json::json!({"party": null, "date": "2026-01-02"})
        );
        let second = read_fields("{\"party\": \"ACME\", \"date\": \"2027\"}", &fields).unwrap();
        assert_eq!(
            Value::Object(merge_fields(vec![first, second], &fields)),
            serde_json::json!({"party": "ACME", "date": "2026-01-02"})
        );
        assert!(read_fields("no json here", &fields).is_err());
        assert!(read_fields("{not json}", &fields).is_err());
    }

    #[test]
    fn labels_are_read_leniently_and_voted() {
        let labels = strings(&["invoice", "contract", "letter"]);
        assert_eq!(read_label(" \"Contract\". ", &labels).unwrap(), "contract");
        assert_eq!(
            read_label("This is a letter to a customer", &labels).unwrap(),
            "letter"
        );
        assert!(read_label("an invoice or a contract", &labels).is_err());
        assert!(read_label("a poem", &labels).is_err());
        assert_eq!(
            vote(&strings(&["letter", "contract", "letter"]), &labels),
            "letter"
        );
        assert_eq!(vote(&strings(&["letter", "contract"]), &labels), "contract");
    }

    #[test]
    fn prompts_carry_the_instructions_models_follow() {
        let extract = Analysis::Extract {
            fields: strings(&["a", "b, c"]),
        };
        let (system, user) = extract.map_prompt("text", 0, 1);
        assert!(
            system.contains(&format!("{JSON_KEYS_INSTRUCTION}a | b, c")),
            "{system}"
        );
        assert_eq!(user, "text");
        let (system, _) = Analysis::Summarize.map_prompt("text", 1, 3);
        assert!(system.contains("part 2 of 3"), "{system}");
        let (_, user) = Analysis::Summarize.reduce_prompt(&strings(&["x", "y"]));
        assert_eq!(user, "Part 1:\nx\n\nPart 2:\ny");
    }
}
