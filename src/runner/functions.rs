//! Function steps: Rust functions registered on the runner by name, called by a
//! step with its arguments and no LLM call, journaled like tool calls.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

type Call<A> = Arc<dyn Fn(A) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>> + Send + Sync>;

/// A registered function, as the step machinery sees it: a tool.
pub(super) struct FunctionTool<A> {
    name: String,
    description: String,
    call: Call<A>,
    args: PhantomData<fn(A)>,
}

impl<A> fmt::Debug for FunctionTool<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionTool").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `function` as a tool named `name`.
pub(super) fn function_tool<A, R, F, Fut>(name: &str, description: &str, function: F) -> Arc<dyn Tool>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    R: Serialize,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, String>> + Send + 'static,
{
    let function = Arc::new(function);
    let call: Call<A> = Arc::new(move |args: A| {
        let function = Arc::clone(&function);
        Box::pin(async move {
            let value = function(args).await?;
            serde_json::to_value(value).map_err(|e| format!("its result does not serialize: {e}"))
        })
    });
    Arc::new(FunctionTool { name: name.to_owned(), description: description.to_owned(), call, args: PhantomData })
}

#[async_trait::async_trait]
impl<A: DeserializeOwned + JsonSchema + Send + 'static> TypedTool for FunctionTool<A> {
    type Args = A;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new(self.name.clone(), self.name.clone(), self.description.clone()).side_effects(false)
    }

    async fn call(&self, _ctx: &ToolRunContext, args: A) -> Result<ToolOutput, ToolError> {
        (self.call)(args)
            .await
            .map(ToolOutput::value)
            .map_err(|e| ToolError::hard(format!("{} failed: {e}", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(serde::Deserialize, JsonSchema)]
    struct Add {
        a: i64,
        b: i64,
    }

    #[tokio::test]
    async fn a_function_is_called_with_typed_arguments_and_its_schema_is_derived() {
        let tool = function_tool("add", "Adds", |args: Add| async move { Ok::<_, String>(args.a + args.b) });
        assert_eq!(tool.spec().args_schema["required"], json!(["a", "b"]));
        let ctx = ToolRunContext::new(crate::WorkflowId::new());
        assert_eq!(tool.run(&ctx, json!({"a": 2, "b": 3})).await.unwrap(), ToolOutput::value(5));
        assert!(tool.run(&ctx, json!({"a": "x"})).await.is_err());
    }
}
