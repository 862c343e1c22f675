//! Blocks: a step whose [`steps`](super::Step::steps) run as an inline sub-plan.
//!
//! A block runs as a child workflow of a plan derived from the enclosing plan and
//! the block's index: the same id every time, so a resumed parent finds the plan
//! and the child it started. What the block's steps read from outside (earlier
//! outputs of the enclosing plan, `$item` and `$index` of its loop) become the
//! derived plan's inputs, so a block needs no hand-written arguments.

use serde_json::Value;

use super::{INDEX, ITEM, Plan, PlanContext, Step, Variable, args, condition, is_loop_variable, output_name};
use crate::ids::PlanId;

impl Step {
    /// A block step: `steps` run in order as an inline sub-plan, and the last one's
    /// output is this step's output (see [`Step::steps`]).
    pub fn block(task: impl Into<String>, steps: Vec<Step>, output: impl Into<String>) -> Self {
        let mut step = Self::new(task, None, output);
        step.steps = steps;
        step
    }

    /// Whether this is a block step (it has steps of its own).
    pub fn is_block(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Every output name this step reads (`$a` for `$a.items[0]`), in order, each
    /// once: its inputs, loop, arguments, condition, exit message and task, and for
    /// a block what its steps read from outside it. A step's own `$item` and
    /// `$index` are kept; an inner loop's are its own and are not.
    /// With `tested` false, what conditions only test is left out.
    fn references_tested(&self, tested: bool) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |name: String| {
            if !names.contains(&name) {
                names.push(name);
            }
        };
        self.inputs.iter().filter(|v| v.is_reference()).for_each(|v| add(output_name(&v.name)));
        self.for_each.iter().for_each(|list| add(output_name(list.trim())));
        let texts = self.args.iter().cloned().chain([Value::from(self.task.as_str())]);
        let texts = texts.chain(self.exit.iter().map(|e| Value::from(e.message())));
        texts.flat_map(|text| args::tokens_in(&text)).for_each(|(token, _)| add(output_name(&token)));
        if tested {
            self.condition.iter().flat_map(|c| condition::references(c)).for_each(|t| add(output_name(&t)));
        }
        self.references_from_outside(tested).into_iter().for_each(add);
        names
    }
}

impl Plan {
    /// What block step `index` reads from outside: earlier outputs and inputs of
    /// this plan, and `$item`/`$index` when the block is a loop. These are the
    /// inputs of its [`block_plan`](Plan::block_plan).
    pub(crate) fn block_inputs(&self, index: usize) -> Vec<String> {
        let Some(step) = self.steps.get(index).filter(|s| s.is_block()) else { return Vec::new() };
        let earlier = |name: &str| {
            self.steps[..index].iter().any(|s| s.output == name) || self.inputs.iter().any(|i| i.name == name)
        };
        let mut names: Vec<String> = Vec::new();
        for name in step.block_references() {
            let loop_variable = step.for_each.is_some() && is_loop_variable(&name);
            if (loop_variable || earlier(&name)) && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The plan block step `index` runs as its child workflow, or `None` when that
    /// step is no block. Its id follows from this plan's id and `index`; its query
    /// is this plan's; its inputs are what the block reads from outside; its output
    /// schema is the block step's (for a last block that does not loop and has none,
    /// the plan's).
    pub fn block_plan(&self, index: usize) -> Option<Plan> {
        let step = self.steps.get(index).filter(|s| s.is_block())?;
        let mut tool_ids: Vec<String> = Vec::new();
        for id in step.steps.iter().flat_map(Step::tool_ids) {
            if !tool_ids.contains(&id) {
                tool_ids.push(id);
            }
        }
        let mut plan = Plan::new(PlanContext::new(self.plan_context.query.clone(), tool_ids), step.steps.clone());
        plan.id = block_plan_id(self.id, index);
        // A block that ends the plan, once, gives the plan's result: it takes the
        // plan's output schema unless it has its own.
        let ends_plan = index + 1 == self.steps.len() && step.for_each.is_none();
        plan.output_schema = step.output_schema.clone().or_else(|| self.output_schema.clone().filter(|_| ends_plan));
        plan.inputs = self.block_inputs(index).into_iter().map(|name| input_variable(self, index, name)).collect();
        Some(plan)
    }
}

impl Step {
    /// What this block's steps read from outside it: each step's references but
    /// the outputs of the block's earlier steps and an inner loop's own `$item`
    /// and `$index`. The list an inner loop runs over is read from outside, even
    /// when it is this block's `$item` (a loop over each item's list).
    pub(super) fn block_references(&self) -> Vec<String> {
        self.references_from_outside(true)
    }

    /// What this block's steps read from outside it as data: as
    /// [`Step::block_references`], less what their conditions only test.
    pub(super) fn block_reads(&self) -> Vec<String> {
        self.references_from_outside(false)
    }

    /// [`Step::block_references`], with what conditions test or without it (`tested`).
    fn references_from_outside(&self, tested: bool) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (i, inner) in self.steps.iter().enumerate() {
            let produced_inside = |name: &str| self.steps[..i].iter().any(|s| s.output == name);
            let list = inner.for_each.as_deref().map(|list| output_name(list.trim()));
            let own_loop =
                |name: &str| inner.for_each.is_some() && is_loop_variable(name) && list.as_deref() != Some(name);
            for name in inner.references_tested(tested) {
                if !produced_inside(&name) && !own_loop(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The tool ids this step uses, its block's steps included.
    pub(crate) fn tool_ids(&self) -> Vec<String> {
        let own = self.tool_id.iter().chain(&self.tools).cloned();
        own.chain(self.steps.iter().flat_map(Step::tool_ids)).collect()
    }
}

/// The input of block step `index`'s plan named `name`, described by where its
/// value comes from.
fn input_variable(plan: &Plan, index: usize, name: String) -> Variable {
    let list = plan.steps[index].for_each.as_deref().unwrap_or_default();
    let description = match name.as_str() {
        ITEM => format!("the current item of {list}"),
        INDEX => format!("the current item's index in {list}, from 0"),
        _ => plan.steps[..index]
            .iter()
            .find(|s| s.output == name)
            .map_or_else(|| format!("{name} of the enclosing plan"), |s| s.task.clone()),
    };
    Variable::reference(name, description)
}

/// The id of the plan block step `index` of plan `parent` runs: a fixed mix of the
/// two, so every run (and every resume) finds the same plan.
fn block_plan_id(parent: PlanId, index: usize) -> PlanId {
    // Name-based (UUID version 5): a block nested in a block at the same index gets
    // an id of its own, never an enclosing plan's.
    PlanId::from_uuid(uuid::Uuid::new_v5(&parent.uuid(), format!("block/{index}").as_bytes()))
}

impl Plan {
    /// Every step, blocks' steps included (each right after its block step), with
    /// its path: the indexes of the block steps that hold it, then its own.
    pub(crate) fn each_step(&self) -> Vec<(Vec<usize>, &Step)> {
        fn walk<'a>(steps: &'a [Step], path: &[usize], found: &mut Vec<(Vec<usize>, &'a Step)>) {
            for (index, step) in steps.iter().enumerate() {
                let here = [path, &[index]].concat();
                found.push((here.clone(), step));
                walk(&step.steps, &here, found);
            }
        }
        let mut found = Vec::new();
        walk(&self.steps, &[], &mut found);
        found
    }
}
