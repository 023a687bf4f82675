//! The JSON bodies of the operations the simulator serves: the Converse request (`messages`,
//! `system`, `inferenceConfig`), the Anthropic Messages body that InvokeModel carries for Claude
//! models, and an OpenAI chat-completions request. Unknown fields are ignored, as Bedrock ignores
//! what it does not use. Tools are read from Converse (`toolConfig`, `toolUse` and `toolResult`
//! blocks) and OpenAI (`tools`, `tool_choice`, assistant `tool_calls`, `tool` messages); other
//! content blocks (images; tools in InvokeModel bodies) are accepted and not read.

use serde::Deserialize;

/// A conversation reduced to what generation needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt {
    pub system: Vec<String>,
    /// `(role, text)` per message.
    pub messages: Vec<(String, String)>,
    pub max_tokens: u32,
    pub stop_sequences: Vec<String>,
    /// The names of the tools the model may call.
    pub tools: Vec<String>,
    pub tool_choice: ToolChoice,
    /// The ids of the tool calls of each message, by message index (assistant turns).
    pub tool_calls: Vec<(usize, String)>,
    /// The tool results each message carries, by message index (user turns).
    pub tool_results: Vec<(usize, ToolOutput)>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// A tool the last user message names, if any.
    #[default]
    Auto,
    /// A tool the last user message names, else the first.
    Any,
    /// This tool.
    Tool(String),
    /// No tool (OpenAI's `"none"`).
    None,
}

/// What one tool call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub tool_call_id: String,
    pub text: String,
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
            .chain(self.tool_results.iter().map(|(_, out)| out.text.as_str()))
            .collect()
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map_or("", |(_, text)| text.as_str())
    }

    /// The tool results the last message carries: the model answers them rather than calling
    /// another tool.
    pub fn answered_tool_results(&self) -> impl Iterator<Item = &ToolOutput> {
        let last = self.messages.len().saturating_sub(1);
        self.tool_results
            .iter()
            .filter(move |(index, _)| *index == last)
            .map(|(_, output)| output)
    }

    /// The tool this prompt has the model call, by the tool choice: a named tool; else one whose
    /// name the last user message mentions; else, when a call is required, the first. None
    /// when the last message carries tool results.
    pub fn tool_to_call(&self) -> Option<&str> {
        if self.tools.is_empty() || self.answered_tool_results().next().is_some() {
            return None;
        }
        let mentioned = || {
            let text = self.last_user_text();
            self.tools
                .iter()
                .find(|name| text.contains(name.as_str()))
                .map(String::as_str)
        };
        match &self.tool_choice {
            ToolChoice::None => None,
            ToolChoice::Tool(name) => Some(name.as_str()),
            ToolChoice::Auto => mentioned(),
            ToolChoice::Any => mentioned().or(self.tools.first().map(String::as_str)),
        }
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
        self.check_tools()
    }

    /// Checks tool use as Bedrock does: a named tool choice names a defined tool, every tool
    /// result answers a call of the message before it, and calls and results need tools.
    fn check_tools(&self) -> Result<(), String> {
        if self.tools.is_empty() && !(self.tool_calls.is_empty() && self.tool_results.is_empty()) {
            return Err(
                "The toolConfig field must be defined when using toolUse and toolResult \
                        content blocks."
                    .into(),
            );
        }
        if let ToolChoice::Tool(name) = &self.tool_choice
            && !self.tools.contains(name)
        {
            return Err(format!(
                "The tool choice names the tool `{name}`, which is not in the tool configuration."
            ));
        }
        for (index, output) in &self.tool_results {
            let answers_a_call = self
                .tool_calls
                .iter()
                .any(|(call_index, id)| *call_index + 1 == *index && *id == output.tool_call_id);
            if !answers_a_call {
                return Err(format!(
                    "The toolResult block with id {} does not match a toolUse block of the \
                     previous turn.",
                    output.tool_call_id
                ));
            }
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
    #[serde(default)]
    pub tool_config: Option<ConverseToolConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseToolConfig {
    #[serde(default)]
    pub tools: Vec<ConverseTool>,
    #[serde(default)]
    pub tool_choice: Option<ConverseToolChoice>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseTool {
    pub tool_spec: Option<NamedTool>,
}

/// Anything with a `name`: a tool spec, a specific tool choice, an OpenAI function.
#[derive(Debug, Deserialize)]
pub struct NamedTool {
    pub name: String,
}

/// `{"auto": {}}`, `{"any": {}}` or `{"tool": {"name": ...}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConverseToolChoice {
    Auto(serde_json::Value),
    Any(serde_json::Value),
    Tool(NamedTool),
}

#[derive(Debug, Deserialize)]
pub struct ConverseMessage {
    pub role: String,
    #[serde(default)]
    pub content: Vec<ConverseContent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseContent {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub tool_use: Option<ConverseToolUse>,
    #[serde(default)]
    pub tool_result: Option<ConverseToolResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseToolUse {
    pub tool_use_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseToolResult {
    pub tool_use_id: String,
    #[serde(default)]
    pub content: Vec<ConverseToolResultContent>,
}

#[derive(Debug, Deserialize)]
pub struct ConverseToolResultContent {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub json: Option<serde_json::Value>,
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
        let mut tool_calls = Vec::new();
        let mut tool_results = Vec::new();
        for (index, message) in request.messages.iter().enumerate() {
            for block in &message.content {
                if let Some(call) = &block.tool_use {
                    tool_calls.push((index, call.tool_use_id.clone()));
                }
                if let Some(result) = &block.tool_result {
                    let text = result
                        .content
                        .iter()
                        .filter_map(|part| {
                            part.text
                                .clone()
                                .or_else(|| part.json.as_ref().map(ToString::to_string))
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    tool_results.push((
                        index,
                        ToolOutput {
                            tool_call_id: result.tool_use_id.clone(),
                            text,
                        },
                    ));
                }
            }
        }
        let (tools, tool_choice) = match request.tool_config {
            Some(config) => (
                config
                    .tools
                    .into_iter()
                    .filter_map(|tool| tool.tool_spec.map(|spec| spec.name))
                    .collect(),
                match config.tool_choice {
                    None | Some(ConverseToolChoice::Auto(_)) => ToolChoice::Auto,
                    Some(ConverseToolChoice::Any(_)) => ToolChoice::Any,
                    Some(ConverseToolChoice::Tool(tool)) => ToolChoice::Tool(tool.name),
                },
            ),
            None => (Vec::new(), ToolChoice::Auto),
        };
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
            tools,
            tool_choice,
            tool_calls,
            tool_results,
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
            ..Prompt::default()
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
    #[serde(default)]
    pub tools: Vec<OpenAiTool>,
    #[serde(default)]
    pub tool_choice: Option<OpenAiToolChoice>,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiTool {
    pub function: NamedTool,
}

/// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OpenAiToolChoice {
    Mode(String),
    Function { function: NamedTool },
}

#[derive(Debug, Deserialize)]
pub struct OpenAiMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<OpenAiContent>,
    #[serde(default)]
    pub tool_calls: Vec<OpenAiToolCall>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiToolCall {
    pub id: String,
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

impl TryFrom<&OpenAiRequest> for Prompt {
    type Error = String;

    /// `tool` messages become the tool results of one user turn, as Bedrock carries them.
    fn try_from(request: &OpenAiRequest) -> Result<Self, String> {
        let text = |content: &Option<OpenAiContent>| match content {
            Some(OpenAiContent::Text(text)) => text.clone(),
            Some(OpenAiContent::Parts(parts)) => parts
                .iter()
                .filter_map(|part| part.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
            None => String::new(),
        };
        let (system, turns): (Vec<_>, Vec<_>) = request
            .messages
            .iter()
            .partition(|message| message.role == "system" || message.role == "developer");
        let mut messages: Vec<(String, String)> = Vec::new();
        let mut tool_calls = Vec::new();
        let mut tool_results = Vec::new();
        for turn in turns {
            if turn.role == "tool" {
                let tool_call_id = turn
                    .tool_call_id
                    .clone()
                    .ok_or("messages: a `tool` message needs `tool_call_id`")?;
                if messages.last().is_none_or(|(role, _)| role != "tool") {
                    messages.push(("tool".into(), String::new()));
                }
                tool_results.push((
                    messages.len() - 1,
                    ToolOutput {
                        tool_call_id,
                        text: text(&turn.content),
                    },
                ));
                continue;
            }
            for call in &turn.tool_calls {
                tool_calls.push((messages.len(), call.id.clone()));
            }
            messages.push((turn.role.clone(), text(&turn.content)));
        }
        // The turn of tool results is the user's, as in Converse.
        for (role, _) in &mut messages {
            if role == "tool" {
                *role = "user".into();
            }
        }
        Ok(Prompt {
            system: system.iter().map(|m| text(&m.content)).collect(),
            messages,
            max_tokens: request
                .max_completion_tokens
                .or(request.max_tokens)
                .unwrap_or(CONVERSE_DEFAULT_MAX_TOKENS),
            stop_sequences: match &request.stop {
                Some(OpenAiStop::One(stop)) => vec![stop.clone()],
                Some(OpenAiStop::Many(stops)) => stops.clone(),
                None => Vec::new(),
            },
            tools: request
                .tools
                .iter()
                .map(|tool| tool.function.name.clone())
                .collect(),
            tool_choice: match &request.tool_choice {
                None => ToolChoice::Auto,
                Some(OpenAiToolChoice::Mode(mode)) => match mode.as_str() {
                    "auto" => ToolChoice::Auto,
                    "required" => ToolChoice::Any,
                    "none" => ToolChoice::None,
                    other => return Err(format!("tool_choice: unknown mode `{other}`")),
                },
                Some(OpenAiToolChoice::Function { function }) => {
                    ToolChoice::Tool(function.name.clone())
                }
            },
            tool_calls,
            tool_results,
        })
    }
}
