//! The JSON bodies of the operations the simulator serves: the Converse request (`messages`,
//! `system`, `inferenceConfig`), the Anthropic Messages body that InvokeModel carries for Claude
//! models, and an OpenAI chat-completions request. Unknown fields are ignored, as Bedrock ignores what it does not use;
//! content blocks other than text (images, tool use) are accepted and not read.

use serde::Deserialize;

/// A conversation reduced to what generation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: Vec<String>,
    /// `(role, text)` per message.
    pub messages: Vec<(String, String)>,
    pub max_tokens: u32,
    pub stop_sequences: Vec<String>,
}

impl Prompt {
    /// Every text of the prompt, for seeding and usage counts.
    pub fn texts(&self) -> Vec<&str> {
        self.system
            .iter()
            .map(String::as_str)
            .chain(
                self.messages
                    .iter()
                    .flat_map(|(role, text)| [role.as_str(), text.as_str()]),
            )
            .collect()
    }

    /// Whether the last user message asks about code (mentions "code"): the answer then shows
    /// a fenced code block, as a chat UI must render.
    pub fn asks_for_code(&self) -> bool {
        self.messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .is_some_and(|(_, text)| text.to_lowercase().contains("code"))
    }

    /// The keys of a JSON object the instructions ask the answer to be ("Answer with one JSON
    /// object with exactly these keys: a | b"), if they ask for one: an instruction-following
    /// model answers with that object.
    pub fn asked_json_keys(&self) -> Option<Vec<String>> {
        self.instruction_list("Answer with one JSON object with exactly these keys: ")
    }

    /// The labels the instructions ask the answer to be one of ("Answer with exactly one of
    /// these labels: a | b"), if they do.
    pub fn asked_labels(&self) -> Option<Vec<String>> {
        self.instruction_list("Answer with exactly one of these labels: ")
    }

    /// The ` | `-separated list after `instruction` on a line of the system prompt or the last
    /// user message.
    fn instruction_list(&self, instruction: &str) -> Option<Vec<String>> {
        let last_user = self
            .messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, text)| text.as_str());
        self.system
            .iter()
            .map(String::as_str)
            .chain(last_user)
            .flat_map(str::lines)
            .find_map(|line| line.trim().strip_prefix(instruction))
            .map(|list| {
                list.split(" | ")
                    .map(|item| item.trim().to_string())
                    .filter(|item| !item.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|items| !items.is_empty())
    }

    /// Whether the conversation ends with an assistant message: a prefill the answer continues.
    pub fn ends_with_assistant(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|(role, _)| role == "assistant")
    }

    /// Checks the rules Bedrock enforces on every model: at least one message, first from the
    /// user, only `user` and `assistant` roles, a positive `max_tokens`.
    pub fn check(&self) -> Result<(), String> {
        match self.messages.first() {
            None => return Err("messages: at least one message is required".into()),
            Some((role, _)) if role != "user" => {
                return Err("A conversation must start with a user message.".into());
            }
            _ => {}
        }
        if let Some((role, _)) = self
            .messages
            .iter()
            .find(|(r, _)| r != "user" && r != "assistant")
        {
            return Err(format!(
                "Unknown role `{role}`: roles must be user or assistant."
            ));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1.".into());
        }
        Ok(())
    }
}

/// Converse's default when `inferenceConfig.maxTokens` is absent.
pub const CONVERSE_DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseRequest {
    #[serde(default)]
    pub messages: Vec<ConverseMessage>,
    #[serde(default)]
    pub system: Vec<ConverseContent>,
    #[serde(default)]
    pub inference_config: Option<InferenceConfig>,
}

#[derive(Debug, Deserialize)]
pub struct ConverseMessage {
    pub role: String,
    #[serde(default)]
    pub content: Vec<ConverseContent>,
}

#[derive(Debug, Deserialize)]
pub struct ConverseContent {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceConfig {
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
}

impl From<ConverseRequest> for Prompt {
    fn from(request: ConverseRequest) -> Self {
        let join = |blocks: Vec<ConverseContent>| {
            blocks
                .into_iter()
                .filter_map(|block| block.text)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (max_tokens, stop_sequences) = match request.inference_config {
            Some(config) => (
                config.max_tokens.unwrap_or(CONVERSE_DEFAULT_MAX_TOKENS),
                config.stop_sequences,
            ),
            None => (CONVERSE_DEFAULT_MAX_TOKENS, Vec::new()),
        };
        Prompt {
            system: request.system.into_iter().filter_map(|b| b.text).collect(),
            messages: request
                .messages
                .into_iter()
                .map(|m| (m.role, join(m.content)))
                .collect(),
            max_tokens,
            stop_sequences,
        }
    }
}

/// The Anthropic Messages body of InvokeModel for Claude models.
#[derive(Debug, Deserialize)]
pub struct AnthropicRequest {
    pub anthropic_version: Option<String>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub messages: Vec<AnthropicMessage>,
    #[serde(default)]
    pub system: Option<AnthropicContent>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct AnthropicMessage {
    pub role: String,
    pub content: AnthropicContent,
}

/// Content is either a plain string or a list of typed blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AnthropicContent {
    Text(String),
    Blocks(Vec<AnthropicBlock>),
}

#[derive(Debug, Deserialize)]
pub struct AnthropicBlock {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl AnthropicContent {
    fn into_text(self) -> String {
        match self {
            AnthropicContent::Text(text) => text,
            AnthropicContent::Blocks(blocks) => blocks
                .into_iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl TryFrom<AnthropicRequest> for Prompt {
    type Error = String;

    fn try_from(request: AnthropicRequest) -> Result<Self, String> {
        if request.anthropic_version.is_none() {
            return Err("anthropic_version: required key [anthropic_version] not found".into());
        }
        let max_tokens = request
            .max_tokens
            .ok_or("max_tokens: required key [max_tokens] not found")?;
        Ok(Prompt {
            system: request
                .system
                .map(AnthropicContent::into_text)
                .into_iter()
                .collect(),
            messages: request
                .messages
                .into_iter()
                .map(|m| (m.role, m.content.into_text()))
                .collect(),
            max_tokens,
            stop_sequences: request.stop_sequences,
        })
    }
}

/// `POST /v1/chat/completions`: the OpenAI chat-completions request.
#[derive(Debug, Deserialize)]
pub struct OpenAiRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<OpenAiMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<OpenAiStop>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<OpenAiStreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<OpenAiContent>,
}

/// Content is a string or a list of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OpenAiContent {
    Text(String),
    Parts(Vec<AnthropicBlock>),
}

/// `stop` is one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OpenAiStop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct OpenAiStreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl OpenAiRequest {
    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }
}

impl From<&OpenAiRequest> for Prompt {
    fn from(request: &OpenAiRequest) -> Self {
        let text = |content: &Option<OpenAiContent>| match content {
            Some(OpenAiContent::Text(text)) => text.clone(),
            Some(OpenAiContent::Parts(parts)) => parts
                .iter()
                .filter_map(|part| part.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
            None => String::new(),
        };
        let (system, messages): (Vec<_>, Vec<_>) = request
            .messages
            .iter()
            .partition(|message| message.role == "system" || message.role == "developer");
        Prompt {
            system: system.iter().map(|m| text(&m.content)).collect(),
            messages: messages
                .iter()
                .map(|m| (m.role.clone(), text(&m.content)))
                .collect(),
            max_tokens: request
                .max_completion_tokens
                .or(request.max_tokens)
                .unwrap_or(CONVERSE_DEFAULT_MAX_TOKENS),
            stop_sequences: match &request.stop {
                Some(OpenAiStop::One(stop)) => vec![stop.clone()],
                Some(OpenAiStop::Many(stops)) => stops.clone(),
                None => Vec::new(),
            },
        }
    }
}
