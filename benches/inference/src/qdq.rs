//! An experiment for the loader: turn ONNX Runtime's QDQ int8 pattern into
//! ONNX's integer operator before tract sees it.
//!
//! `quantize_static(..., QuantFormat.QDQ)` writes each quantised Conv as
//! float ops wrapped in (De)QuantizeLinear:
//!
//! ```text
//!   DQ(x_q, xs, xz) ─┐
//!   DQ(w_q, ws, wz) ─┼─ Conv ── Q(·, ys, yz) ──▶ y_q
//!   DQ(b_q, bs, 0)  ─┘
//! ```
//!
//! tract imports that literally: an f32 convolution between an int8->f32
//! and an f32->int8 pass over the activations (ONNX Runtime fuses it into
//! one integer kernel). The same computation is ONNX's `QLinearConv(x_q,
//! xs, xz, w_q, ws, wz, ys, yz, b_q) -> y_q`, which tract builds as an int8
//! matrix product with i32 accumulation and requantisation. Exact when the
//! bias is quantised with scale `xs * ws` and zero point 0 (what the ORT
//! quantiser writes); otherwise the Conv is left alone.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// What [`rewrite_convs`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rewrite {
    pub convs: usize,
    pub skipped: Vec<String>,
}

fn initializer<'a>(
    inits: &'a HashMap<String, &TensorProto>,
    name: &str,
) -> Option<&'a TensorProto> {
    inits.get(name).copied()
}

fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    let t = tract_onnx::tensor::load_tensor(&FopenDataResolver, t, None)?;
    Ok(t.cast_to::<f32>()?
        .try_as_plain_ram()?
        .as_slice::<f32>()?
        .to_vec())
}

/// Rewrites every Conv in the QDQ pattern into a QLinearConv; returns how
/// many, and why the others were not.
pub fn rewrite_convs(proto: &mut ModelProto) -> Result<Rewrite> {
    let graph = proto.graph.as_mut().context("no graph")?;
    let inits: HashMap<String, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for inp in &n.input {
            consumers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let graph_outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let dq = |name: &str| -> Option<&NodeProto> {
        let n = &graph.node[*producer.get(name)?];
        (n.op_type == "DequantizeLinear" && n.input.len() == 3).then_some(n)
    };

    let mut report = Rewrite::default();
    let mut replace: Vec<(usize, usize, NodeProto)> = Vec::new(); // (conv, q, new node)
    for (ci, conv) in graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Conv")
    {
        let why = (|| -> Result<Option<(usize, NodeProto)>> {
            let Some(x) = dq(&conv.input[0]) else {
                return Ok(None);
            };
            let Some(w) = conv.input.get(1).and_then(|w| dq(w)) else {
                return Ok(None);
            };
            if initializer(&inits, &w.input[0]).is_none() {
                return Ok(None);
            }
            let out = conv.output[0].as_str();
            let users = consumers.get(out).cloned().unwrap_or_default();
            if users.len() != 1 || graph_outputs.contains(&out) {
                return Ok(None);
            }
            let qi = users[0];
            let q = &graph.node[qi];
            if q.op_type != "QuantizeLinear" || q.input.len() != 3 {
                return Ok(None);
            }
            let mut inputs = vec![
                x.input[0].clone(),
                x.input[1].clone(),
                x.input[2].clone(),
                w.input[0].clone(),
                w.input[1].clone(),
                w.input[2].clone(),
                q.input[1].clone(),
                q.input[2].clone(),
            ];
            if let Some(b) = conv.input.get(2).filter(|b| !b.is_empty()) {
                let Some(bq) = dq(b) else { return Ok(None) };
                let (Some(bs), Some(bz), Some(xs), Some(ws)) = (
                    initializer(&inits, &bq.input[1]),
                    initializer(&inits, &bq.input[2]),
                    initializer(&inits, &x.input[1]),
                    initializer(&inits, &w.input[1]),
                ) else {
                    return Ok(None);
                };
                let (bs, bz, xs, ws) = (floats(bs)?, floats(bz)?, floats(xs)?, floats(ws)?);
                let xs = xs.first().copied().unwrap_or(0.0);
                let scale_ok = bs.len() == ws.len()
                    && bs
                        .iter()
                        .zip(&ws)
                        .all(|(b, w)| (b - xs * w).abs() <= 1e-6 * (xs * w).abs().max(1e-30));
                if !scale_ok || bz.iter().any(|z| *z != 0.0) {
                    return Ok(None);
                }
                inputs.push(bq.input[0].clone());
            }
            let node = NodeProto {
                input: inputs,
                output: vec![q.output[0].clone()],
                name: format!("{}_qlinear", conv.name),
                op_type: "QLinearConv".into(),
                domain: String::new(),
                attribute: conv.attribute.clone(),
                doc_string: String::new(),
            };
            Ok(Some((qi, node)))
        })()?;
        match why {
            Some((qi, node)) => replace.push((ci, qi, node)),
            None => report.skipped.push(conv.name.clone()),
        }
    }
    report.convs = replace.len();
    let drop_q: Vec<usize> = replace.iter().map(|r| r.1).collect();
    let mut new_nodes: HashMap<usize, NodeProto> =
        replace.into_iter().map(|(c, _, n)| (c, n)).collect();
    let old = std::mem::take(&mut graph.node);
    graph.node = old
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop_q.contains(i))
        .map(|(i, n)| new_nodes.remove(&i).unwrap_or(n))
        .collect();
    remove_dead_nodes(proto);
    Ok(report)
}

/// Drops nodes none of whose outputs is used (the DequantizeLinear nodes
/// the rewrite bypassed).
fn remove_dead_nodes(proto: &mut ModelProto) {
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    loop {
        let used: std::collections::HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(graph.output.iter().map(|o| o.name.clone()))
            .collect();
        let before = graph.node.len();
        graph
            .node
            .retain(|n| n.output.iter().any(|o| used.contains(o)));
        if graph.node.len() == before {
            break;
        }
    }
}

/// The loader's typed model, from the rewritten proto.
pub fn qlinear_typed(bytes: &[u8], channels: usize, window: usize) -> TractResult<TypedModel> {
    let onnx = onnx().with_ignore_value_info(true);
    let mut proto = onnx.proto_model_for_read(&mut &*bytes)?;
    rewrite_convs(&mut proto).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut model = onnx.model_for_proto_model(&proto)?;
    model = model.with_input_fact(0, f32::fact([1, channels, window]).into())?;
    model.into_typed()
}

/// A tiny QDQ model for tests: Q/DQ input, one per-channel int8 Conv with
/// int32 bias, Q/DQ output, as ORT's quantiser writes it.
#[cfg(test)]
pub mod testmodel {
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::type_proto::{Tensor as TypeTensor, Value};
    use tract_onnx::pb::*;

    fn t(name: &str, dt: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: dt as i32,
            dims: dims.to_vec(),
            raw_data: raw,
            ..Default::default()
        }
    }
    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn i32s(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("{op}_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    }
    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attribute_proto::AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }
    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attribute_proto::AttributeType::Int as i32,
            i: v,
            ..Default::default()
        }
    }
    fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(Value::TensorType(TypeTensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| tensor_shape_proto::Dimension {
                                value: Some(tensor_shape_proto::dimension::Value::DimValue(*d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Input `x` [1, 2, 8], output `y` [1, 3, 8].
    pub fn conv_qdq() -> ModelProto {
        let (xs, ys) = (0.05f32, 0.02f32);
        let ws = [0.01f32, 0.02, 0.015];
        let w: Vec<u8> = (0..18).map(|i| ((i * 37 % 23) as i8 - 11) as u8).collect();
        let bias = [7i32, -20, 3];
        let init = vec![
            t("xs", DataType::Float, &[], f32s(&[xs])),
            t("xz", DataType::Uint8, &[], vec![128]),
            t("wq", DataType::Int8, &[3, 2, 3], w),
            t("ws", DataType::Float, &[3], f32s(&ws)),
            t("wz", DataType::Int8, &[3], vec![0, 0, 0]),
            t("bq", DataType::Int32, &[3], i32s(&bias)),
            t("bs", DataType::Float, &[3], f32s(&ws.map(|w| w * xs))),
            t("bz", DataType::Int32, &[3], i32s(&[0, 0, 0])),
            t("ys", DataType::Float, &[], f32s(&[ys])),
            t("yz", DataType::Uint8, &[], vec![0]),
        ];
        let nodes = vec![
            node("QuantizeLinear", &["x", "xs", "xz"], "xq", vec![]),
            node("DequantizeLinear", &["xq", "xs", "xz"], "xf", vec![]),
            node(
                "DequantizeLinear",
                &["wq", "ws", "wz"],
                "wf",
                vec![int("axis", 0)],
            ),
            node(
                "DequantizeLinear",
                &["bq", "bs", "bz"],
                "bf",
                vec![int("axis", 0)],
            ),
            node(
                "Conv",
                &["xf", "wf", "bf"],
                "c",
                vec![ints("kernel_shape", &[3]), ints("pads", &[1, 1])],
            ),
            node("QuantizeLinear", &["c", "ys", "yz"], "cq", vec![]),
            node("DequantizeLinear", &["cq", "ys", "yz"], "y", vec![]),
        ];
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "conv_qdq".into(),
                node: nodes,
                initializer: init,
                input: vec![value("x", &[1, 2, 8])],
                output: vec![value("y", &[1, 3, 8])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn input() -> Vec<f32> {
        (0..16)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.37)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn run(model: TypedModel, input: &[f32]) -> Vec<f32> {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let x = Tensor::from_shape(&[1, 2, 8], input).unwrap();
        let out = plan.run(tvec!(x.into_tvalue())).unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn typed(proto: &ModelProto) -> TypedModel {
        let onnx = onnx().with_ignore_value_info(true);
        onnx.model_for_proto_model(proto)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 2, 8]).into())
            .unwrap()
            .into_typed()
            .unwrap()
    }

    #[test]
    fn the_qdq_conv_becomes_one_qlinearconv_with_the_same_answer() {
        let original = testmodel::conv_qdq();
        let mut proto = original.clone();
        let r = rewrite_convs(&mut proto).unwrap();
        assert_eq!(
            r,
            Rewrite {
                convs: 1,
                skipped: vec![]
            }
        );
        let ops: Vec<&str> = proto
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .collect();
        assert_eq!(ops, ["QuantizeLinear", "QLinearConv", "DequantizeLinear"]);

        let x = testmodel::input();
        let want = run(typed(&original), &x);
        let got = run(typed(&proto), &x);
        assert_eq!(want.len(), 24);
        // integer requantisation may round a value to the neighbouring step
        let diff = crate::reference::max_abs_diff(&want, &got).unwrap();
        assert!(diff <= 0.02 + 1e-6, "{want:?}\n{got:?}");
    }

    #[test]
    fn a_conv_whose_bias_scale_is_not_xs_times_ws_is_left_alone() {
        let mut proto = testmodel::conv_qdq();
        let g = proto.graph.as_mut().unwrap();
        let bs = g.initializer.iter_mut().find(|t| t.name == "bs").unwrap();
        bs.raw_data = [1.0f32, 1.0, 1.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let r = rewrite_convs(&mut proto).unwrap();
        assert_eq!(r.convs, 0);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(proto.graph.unwrap().node.len(), 7);
    }
}
