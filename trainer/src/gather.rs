//! The row gather that convolutions (im2col) and upsampling are built from, with a
//! fast CPU kernel.
//!
//! Activations of spatial networks are kept feature-major (`[features, batch]`), so
//! every gathered element is a whole row of `batch` values: on the CPU the forward
//! pass is one `copy_from_slice` per row and the backward pass one add per row.
//! dfdx's generic `gather` computes an n-dimensional index per element and was
//! 80 % of a small CNN's training time; it remains the path for other devices.

use std::sync::Arc;

use dfdx::prelude::*;

/// Which input row each output row copies (`None`: a zero row, the padding).
#[derive(Debug, Clone)]
pub struct RowIndex<E: Dtype, D: Device<E>> {
    rows: Arc<Vec<Option<usize>>>,
    /// The same for dfdx's `gather` (0 where `rows` is `None`) and the 0/1 mask.
    idx: Tensor<(usize,), usize, D>,
    mask: Option<Tensor<(usize,), E, D>>,
}

impl<E: Dtype + num_traits::Float, D: Device<E>> RowIndex<E, D> {
    /// An index on `dev`.
    pub fn new(dev: &D, rows: Vec<Option<usize>>) -> Self {
        let n = rows.len();
        let idx = dev.tensor_from_vec(rows.iter().map(|r| r.unwrap_or(0)).collect(), (n,));
        let mask = rows.iter().any(Option::is_none).then(|| {
            dev.tensor_from_vec(
                rows.iter()
                    .map(|r| if r.is_some() { E::one() } else { E::zero() })
                    .collect(),
                (n,),
            )
        });
        RowIndex {
            rows: Arc::new(rows),
            idx,
            mask,
        }
    }

    /// Number of output rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no output rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A dfdx device the networks run on: one that can gather rows.
pub trait NetDevice<E: Dtype>: Device<E> {
    /// `y[r] = x[index[r]]` (a zero row where the index is `None`) for a
    /// feature-major `x` (`[rows, batch]`), differentiable.
    fn gather_rows<T>(
        x: Tensor<(usize, usize), E, Self, T>,
        index: &RowIndex<E, Self>,
    ) -> Tensor<(usize, usize), E, Self, T>
    where
        T: Tape<E, Self> + Merge<NoneTape>;
}

/// dfdx's generic gather and a mask multiplication: correct on every device.
fn gather_rows_generic<E, D, T>(
    x: Tensor<(usize, usize), E, D, T>,
    index: &RowIndex<E, D>,
) -> Tensor<(usize, usize), E, D, T>
where
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D> + Merge<NoneTape>,
{
    let b = x.shape().1;
    let n = index.rows.len();
    let y: Tensor<(usize, usize), E, D, T> = x.gather(index.idx.clone());
    match &index.mask {
        Some(m) => y * m.clone().broadcast_like::<_, Axis<1>>(&(n, b)),
        None => y,
    }
}

/// The elements of a contiguous CPU tensor (every fresh tensor, and what
/// `contiguous()` returns), by one copy of its buffer. dfdx's `as_vec` walks a
/// multi-dimensional index per element: in this kernel it was 27 % of the time of
/// an attack through a convolutional purifier.
fn contiguous_to_vec<S: Shape, E: Unit, T>(t: &Tensor<S, E, Cpu, T>) -> Vec<E> {
    let mut v = vec![E::default(); t.shape().num_elements()];
    t.copy_into(&mut v);
    v
}

/// The CPU kernel, for the float types the trainer uses.
macro_rules! cpu_gather_rows {
    ($E:ty) => {
        impl NetDevice<$E> for Cpu {
            fn gather_rows<T>(
                x: Tensor<(usize, usize), $E, Self, T>,
                index: &RowIndex<$E, Self>,
            ) -> Tensor<(usize, usize), $E, Self, T>
            where
                T: Tape<$E, Self> + Merge<NoneTape>,
            {
                let x = x.contiguous();
                let (rows_in, b) = *x.shape();
                if index.rows.iter().flatten().any(|&r| r >= rows_in) {
                    // Not a valid index for this input: let dfdx report it.
                    return gather_rows_generic(x, index);
                }
                let (inp, mut tape) = x.split_tape();
                let src = contiguous_to_vec(&inp);
                let mut out = vec![0.0 as $E; index.rows.len() * b];
                for (row, r) in out.chunks_mut(b.max(1)).zip(index.rows.iter()) {
                    if let Some(r) = *r {
                        row.copy_from_slice(&src[r * b..(r + 1) * b]);
                    }
                }
                let out: Tensor<(usize, usize), $E, Self> =
                    inp.device().tensor_from_vec(out, (index.rows.len(), b));
                let rows = index.rows.clone();
                let out_id = out.clone();
                tape.add_backward_op(move |grads| {
                    grads.try_alloc_for(&out_id)?;
                    let g = contiguous_to_vec(&grads.get(&out_id));
                    let gin = grads.get_or_alloc_mut(&inp)?;
                    for (grow, r) in g.chunks(b.max(1)).zip(rows.iter()) {
                        if let Some(r) = *r {
                            for (a, &v) in gin[r * b..(r + 1) * b].iter_mut().zip(grow) {
                                *a += v;
                            }
                        }
                    }
                    Ok(())
                });
                out.put_tape(tape)
            }
        }
    };
}

cpu_gather_rows!(f32);
cpu_gather_rows!(f64);

#[cfg(feature = "cuda")]
impl<E: Dtype + num_traits::Float> NetDevice<E> for Cuda
where
    Cuda: Device<E>,
{
    fn gather_rows<T>(
        x: Tensor<(usize, usize), E, Self, T>,
        index: &RowIndex<E, Self>,
    ) -> Tensor<(usize, usize), E, Self, T>
    where
        T: Tape<E, Self> + Merge<NoneTape>,
    {
        gather_rows_generic(x, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU kernel and dfdx's generic gather (what other devices use) agree,
    /// forward and backward, with zero rows and repeated rows.
    #[test]
    fn cpu_kernel_matches_the_generic_gather() {
        let dev = Cpu::default();
        let rows = vec![Some(2), None, Some(0), Some(2), Some(1), None];
        let index = RowIndex::<f64, Cpu>::new(&dev, rows);
        let x: Tensor<(usize, usize), f64, Cpu> =
            dev.tensor_from_vec((0..12).map(|v| f64::from(v) * 0.5 - 1.0).collect(), (3, 4));
        let w: Tensor<(usize, usize), f64, Cpu> =
            dev.tensor_from_vec((0..24).map(|v| f64::from(v % 7) - 3.0).collect(), (6, 4));
        let fast = <Cpu as NetDevice<f64>>::gather_rows(x.leaky_trace(), &index);
        let slow = gather_rows_generic(x.leaky_trace(), &index);
        assert_eq!(fast.as_vec(), slow.as_vec());
        assert_eq!(&fast.as_vec()[4..8], &[0.0; 4]);
        let gf = (fast * w.clone())
            .sum::<Rank0, _>()
            .backward()
            .get(&x)
            .as_vec();
        let gs = (slow * w.clone())
            .sum::<Rank0, _>()
            .backward()
            .get(&x)
            .as_vec();
        assert_eq!(gf, gs);
        // Row 2 is read twice: its gradient is the sum of rows 0 and 3 of w.
        assert_eq!(&gf[8..12], &[-3.0 + 2.0, -2.0 + 3.0, -1.0 - 3.0, 0.0 - 2.0]);
        // A non-contiguous input (a transposed view) reads its logical rows.
        let xt: Tensor<(usize, usize), f64, Cpu> =
            dev.tensor_from_vec((0..12).map(f64::from).collect(), (4, 3));
        let view = xt.leaky_trace().permute::<_, Axes2<1, 0>>();
        let fast = <Cpu as NetDevice<f64>>::gather_rows(view, &index);
        let slow = gather_rows_generic(xt.leaky_trace().permute::<_, Axes2<1, 0>>(), &index);
        assert_eq!(&fast.as_vec()[..4], &[2.0, 5.0, 8.0, 11.0]);
        assert_eq!(fast.as_vec(), slow.as_vec());
        let gf = (fast * w.clone())
            .sum::<Rank0, _>()
            .backward()
            .get(&xt)
            .as_vec();
        let gs = (slow * w).sum::<Rank0, _>().backward().get(&xt).as_vec();
        assert_eq!(gf, gs);
    }
}
