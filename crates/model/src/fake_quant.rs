//! A loader-side fix for tract's QuantizeLinear on QDQ int8 models.
//!
//! tract 0.23.9 imports ONNX `QuantizeLinear` (u8) as
//! `ElementWiseOp(QuantizeLinearU8)`, whose per-element body is
//! `round_ties_to_even(x * (1/scale)) as i32 + zero_point`, clamped, with
//! `tract_data::round_ties_to_even` branching on the exponent, on the sign
//! and on a zero result: scalar, with a sign branch that real activations
//! mispredict about half the time: ~1.3 ns per value with clean vector
//! state, 3-5 ns right after tract's AVX-512 matrix kernels (see
//! `avx.rs`), which on the int8 edge models was the larger part of a
//! whole inference. The `DequantizeLinear` that follows is a second pass.
//!
//! Two drop-in replacements, applied by [`crate::OnnxModel`]'s loader to
//! the optimised `TypedModel` (both are plain `ElementWiseMiniOp`s, so the
//! loader uses them without patching tract). On the int8 edge models this
//! took 28-30% off a window (BENCHMARKS.md, "Edge inference"); the fp32
//! models have no such pairs and are left as they are:
//!
//! - [`QuantizeU8`]: the same function, branch-free: clamp to the
//!   representable range first (exact, because rounding is monotonic and
//!   the bounds are integers), then round ties-to-even with the
//!   `v + 1.5*2^23` identity (valid for |v| < 2^22), reading the integer
//!   back from the float's bits. Same bytes out as tract's op for every
//!   non-NaN input (NaN gives 0 instead of the zero point).
//! - [`FakeQuantU8`]: a `QuantizeLinear -> DequantizeLinear` pair (what QDQ
//!   leaves between two float ops) as one f32 -> f32 pass, in place:
//!   `round(clamp(x / s, -zp, 255 - zp)) * s`. Same bits as the pair for
//!   every non-NaN input.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};

/// 1.5 * 2^23: adding and subtracting it rounds ties to even for |v| < 2^22.
const ROUND: f32 = 12_582_912.0;

/// Branch-free `QuantizeLinearU8`: `scale` is the reciprocal of ONNX's
/// `y_scale`, as in tract's op.
#[derive(Debug, Clone)]
pub struct QuantizeU8 {
    pub scale: f32,
    pub zero_point: u8,
}

impl PartialEq for QuantizeU8 {
    fn eq(&self, o: &Self) -> bool {
        self.scale.to_bits() == o.scale.to_bits() && self.zero_point == o.zero_point
    }
}
impl Eq for QuantizeU8 {}

/// The kernel of [`QuantizeU8`], on slices. After the clamp, `v + ROUND`
/// lies in [2^23, 2^24), where the float's low mantissa bits are the
/// integer `ROUND + round(v)`: reading them back needs no float-to-int
/// conversion, so the loop vectorises even for the baseline x86-64 target.
pub fn quantize_u8(scale: f32, zero_point: u8, xs: &[f32], ys: &mut [u8]) {
    let zp = zero_point as f32;
    let (lo, hi) = (-zp, 255.0 - zp);
    let base = ROUND.to_bits() as i32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let v = x * scale;
        let v = if v > lo { v } else { lo }; // NaN ends at lo
        let v = if v < hi { v } else { hi };
        let r = (v + ROUND).to_bits() as i32 - base;
        *y = (r + zero_point as i32) as u8;
    }
}

impl ElementWiseMiniOp for QuantizeU8 {
    fn name(&self) -> String {
        "QuantizeU8Branchless".into()
    }
    fn output_type(&self, input_type: DatumType) -> Option<DatumType> {
        (input_type == f32::datum_type()).then(u8::datum_type)
    }
    fn eval_out_of_place(&self, t: &Tensor, _out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let mut dst = unsafe { Tensor::uninitialized_dt(u8::datum_type(), t.shape())? };
        {
            let src = t.try_as_plain_ram()?;
            let mut out = dst.try_as_plain_ram_mut()?;
            quantize_u8(
                self.scale,
                self.zero_point,
                src.as_slice::<f32>()?,
                out.as_slice_mut::<u8>()?,
            );
        }
        Ok(dst)
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "1/scale: {} zero_point: {}",
            self.scale, self.zero_point
        )])
    }
}

/// `DequantizeLinear(QuantizeLinear(x))` for u8, in one pass.
#[derive(Debug, Clone)]
pub struct FakeQuantU8 {
    /// 1 / y_scale of the QuantizeLinear (tract's multiplier).
    pub q_scale: f32,
    pub zero_point: u8,
    /// The DequantizeLinear's scale.
    pub dq_scale: f32,
}

impl PartialEq for FakeQuantU8 {
    fn eq(&self, o: &Self) -> bool {
        self.q_scale.to_bits() == o.q_scale.to_bits()
            && self.dq_scale.to_bits() == o.dq_scale.to_bits()
            && self.zero_point == o.zero_point
    }
}
impl Eq for FakeQuantU8 {}

/// The kernel of [`FakeQuantU8`], in place.
pub fn fake_quant_u8(q_scale: f32, zero_point: u8, dq_scale: f32, xs: &mut [f32]) {
    let zp = zero_point as f32;
    let (lo, hi) = (-zp, 255.0 - zp);
    for x in xs.iter_mut() {
        let v = (*x * q_scale).max(lo).min(hi);
        let r = (v + ROUND) - ROUND;
        // DequantizeLinearF32 computes (q - zp) as i32, then * scale: r is
        // exactly that integer
        *x = r * dq_scale;
    }
}

impl ElementWiseMiniOp for FakeQuantU8 {
    fn name(&self) -> String {
        "FakeQuantU8".into()
    }
    fn eval_in_place(&self, t: &mut Tensor, _out_dt: Option<DatumType>) -> TractResult<()> {
        let mut plain = t.try_as_plain_ram_mut()?;
        fake_quant_u8(
            self.q_scale,
            self.zero_point,
            self.dq_scale,
            plain.as_slice_mut::<f32>()?,
        );
        Ok(())
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "1/scale: {} zero_point: {} scale: {}",
            self.q_scale, self.zero_point, self.dq_scale
        )])
    }
}

fn as_quantize_u8(node: &TypedNode) -> Option<&QuantizeLinearU8> {
    node.op_as::<ElementWiseOp>()?
        .0
        .downcast_ref::<QuantizeLinearU8>()
}

/// Swaps every `QuantizeLinearU8` of an (optimised) model for
/// [`QuantizeU8`]; returns how many.
pub fn branchless_quantize(model: &mut TypedModel) -> usize {
    let mut n = 0;
    for node in model.nodes_mut() {
        let Some(q) = node
            .op_as::<ElementWiseOp>()
            .and_then(|e| e.0.downcast_ref::<QuantizeLinearU8>())
        else {
            continue;
        };
        let op = QuantizeU8 {
            scale: q.scale,
            zero_point: q.zero_point,
        };
        node.op = Box::new(ElementWiseOp(Box::new(op), None));
        n += 1;
    }
    n
}

/// Replaces each `QuantizeLinearU8 -> DequantizeLinearF32` pair with the
/// same zero point (and the Q feeding only the DQ) by one [`FakeQuantU8`];
/// the remaining QuantizeLinearU8 become [`QuantizeU8`]. Returns the pairs
/// fused and the lone quantizers swapped.
pub fn fuse_fake_quant(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let mut pairs = 0;
    loop {
        let mut found = None;
        for node in model.nodes() {
            let Some(q) = as_quantize_u8(node) else {
                continue;
            };
            let Some(dq) = model.single_succ(node.id)? else {
                continue;
            };
            let Some(d) = dq.op_as::<DequantizeLinearF32>() else {
                continue;
            };
            if d.zero_point != q.zero_point as i32
                || model.outputs.contains(&OutletId::new(node.id, 0))
            {
                continue;
            }
            found = Some((
                node.inputs[0],
                dq.id,
                FakeQuantU8 {
                    q_scale: q.scale,
                    zero_point: q.zero_point,
                    dq_scale: d.scale,
                },
                node.name.clone(),
            ));
            break;
        }
        let Some((input, dq, op, name)) = found else {
            break;
        };
        let mut patch = TypedModelPatch::default();
        let wire = patch.tap_model(model, input)?;
        let wire = patch.wire_node(
            format!("{name}.fake_quant"),
            ElementWiseOp(Box::new(op), None),
            &[wire],
        )?[0];
        patch.shunt_outside(model, OutletId::new(dq, 0), wire)?;
        patch.apply(model)?;
        pairs += 1;
    }
    model.compact()?;
    let lone = branchless_quantize(model);
    Ok((pairs, lone))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::quantize_linear_f32_u8;

    fn samples() -> Vec<f32> {
        // ties, near-ties, negatives, out of range, both signs of zero
        let mut v: Vec<f32> = vec![
            0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 254.5, 255.5, 300.0, -300.0, 1e9, -1e9,
        ];
        let mut x = 0.123_f32;
        for _ in 0..20_000 {
            x = (x * 1103.515 + 12.345) % 613.0 - 306.0;
            v.push(x);
            v.push(x.trunc() + 0.5);
        }
        v
    }

    #[test]
    fn branchless_quantize_matches_tract_bit_for_bit() {
        let xs = samples();
        for (scale, zp) in [
            (1.0f32, 0u8),
            (0.054050297, 25),
            (54.966232, 0),
            (1.0, 128),
            (0.3, 255),
        ] {
            let mut ys = vec![0u8; xs.len()];
            quantize_u8(scale, zp, &xs, &mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(
                    *y,
                    quantize_linear_f32_u8(*x, scale, zp as i32),
                    "x={x} scale={scale} zp={zp}"
                );
            }
        }
    }

    #[test]
    fn fake_quant_is_quantize_then_dequantize() {
        let xs = samples();
        for (scale, zp) in [
            (0.054050297f32, 25u8),
            (54.966232, 0),
            (1.0, 128),
            (1.0, 25),
            (1.0, 1),
        ] {
            let dq = 1.0 / scale;
            let mut ys = xs.clone();
            fake_quant_u8(scale, zp, dq, &mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                let q = quantize_linear_f32_u8(*x, scale, zp as i32);
                let want = (q as i32 - zp as i32) as f32 * dq;
                assert_eq!(y.to_bits(), want.to_bits(), "x={x} scale={scale} zp={zp}");
            }
        }
    }
}
