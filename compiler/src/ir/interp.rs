//! The reference interpreter: executes any graph on host tensors. Plain and obviously
//! correct; the oracle every backend is tested against.

use super::graph::{Graph, NodeId};
use super::op::{DType, Op};
use super::ops;
use super::tensor::{Data, Tensor};
use std::collections::HashMap;

/// Values of every node after a run.
pub type Values = HashMap<NodeId, Tensor>;

/// Runs the graph with the given input values (by input name).
pub fn run(g: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Values, String> {
    let order = g.topo().map_err(|e| e.0)?;
    let mut vals: Values = HashMap::with_capacity(order.len());
    for id in order {
        let node = g.node(id);
        let v = match &node.op {
            Op::Input {
                name, shape, dtype, ..
            } => {
                let t = inputs
                    .get(name)
                    .ok_or_else(|| format!("no value for input `{name}`"))?;
                let dt_ok = matches!(
                    (&t.data, dtype),
                    (Data::F32(_), DType::F32) | (Data::I64(_), DType::I64)
                );
                if &t.shape != shape || !dt_ok {
                    return Err(format!(
                        "input `{name}` expects {dtype:?}{shape:?}, got {:?}",
                        t.shape
                    ));
                }
                t.clone()
            }
            op => {
                let ins: Vec<&Tensor> = g.inputs(id).iter().map(|i| &vals[i]).collect();
                ops::eval(op, &ins)
                    .map_err(|e| format!("{} (node {}): {e}", op.name(), id.index()))?
            }
        };
        vals.insert(id, v);
    }
    Ok(vals)
}

/// Runs the graph and returns its named outputs.
pub fn run_outputs(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, String> {
    let vals = run(g, inputs)?;
    Ok(g.outputs
        .iter()
        .map(|(n, id)| (n.clone(), vals[id].clone()))
        .collect())
}
