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

/// Runs the graph and returns only its named outputs, freeing every intermediate value after
/// its last use and reading inputs in place from the given maps (searched in order). The same
/// semantics as [`run`]; the form the runtime uses.
pub fn run_lean(
    g: &Graph,
    inputs: &[&HashMap<String, Tensor>],
) -> Result<HashMap<String, Tensor>, String> {
    let order = g.topo().map_err(|e| e.0)?;
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for i in g.inputs(id) {
            *uses.entry(i).or_default() += 1;
        }
    }
    let keep: std::collections::HashSet<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
    let find = |name: &str| inputs.iter().find_map(|m| m.get(name));
    let mut vals: HashMap<NodeId, Tensor> = HashMap::new();
    for id in order {
        let node = g.node(id);
        if let Op::Input { name, shape, .. } = &node.op {
            let t = find(name).ok_or_else(|| format!("no value for input `{name}`"))?;
            if &t.shape != shape {
                return Err(format!(
                    "input `{name}` expects {shape:?}, got {:?}",
                    t.shape
                ));
            }
            if keep.contains(&id) {
                vals.insert(id, t.clone());
            }
            continue;
        }
        let ins_ids = g.inputs(id);
        let v = {
            let mut ins: Vec<&Tensor> = Vec::with_capacity(ins_ids.len());
            for i in &ins_ids {
                let t = match &g.node(*i).op {
                    Op::Input { name, .. } => {
                        find(name).ok_or_else(|| format!("no value for input `{name}`"))?
                    }
                    _ => vals
                        .get(i)
                        .ok_or_else(|| format!("value of node {} was freed early", i.index()))?,
                };
                ins.push(t);
            }
            ops::eval(&node.op, &ins)
                .map_err(|e| format!("{} (node {}): {e}", node.op.name(), id.index()))?
        };
        vals.insert(id, v);
        for i in ins_ids {
            if let Some(u) = uses.get_mut(&i) {
                *u -= 1;
                if *u == 0 && !keep.contains(&i) {
                    vals.remove(&i);
                }
            }
        }
    }
    Ok(g.outputs
        .iter()
        .filter_map(|(n, id)| vals.get(id).map(|t| (n.clone(), t.clone())))
        .collect())
}
