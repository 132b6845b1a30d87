//! The uniform parameter struct of every kernel, one `#[repr(C)]` Pod mirror per WGSL struct
//! of the same name (`tests/shaders.rs` checks sizes and member offsets with naga's layouter).
//! Build them with [`params!`](crate::params), which checks that every `usize` fits its `u32`.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RnnError};

/// A value that becomes a parameter field of type `T`.
pub trait Field<T> {
    /// `self` as `T`, or an error naming `what` (struct.field) when it does not fit.
    fn field(self, what: &str) -> Result<T>;
}

impl Field<u32> for usize {
    fn field(self, what: &str) -> Result<u32> {
        u32::try_from(self).map_err(|_| {
            RnnError::TooLarge(format!("kernel parameter {what} = {self} exceeds 32 bits"))
        })
    }
}

impl Field<u32> for bool {
    fn field(self, _: &str) -> Result<u32> {
        Ok(u32::from(self))
    }
}

impl Field<u32> for u32 {
    fn field(self, _: &str) -> Result<u32> {
        Ok(self)
    }
}

impl Field<f32> for f32 {
    fn field(self, _: &str) -> Result<f32> {
        Ok(self)
    }
}

/// `params!(Struct { field: value, .. })`: a parameter struct whose fields are converted with
/// [`Field`] (`usize` and `bool` to `u32`, checked); fields not named are zero. Evaluates to
/// `Result<Struct>`.
#[macro_export]
#[doc(hidden)]
macro_rules! params {
    ($ty:ident { $($field:ident : $value:expr),* $(,)? }) => {
        (|| -> $crate::Result<$ty> {
            #[allow(unused_mut)]
            let mut p = <$ty as bytemuck::Zeroable>::zeroed();
            $(p.$field = $crate::gpu::params::Field::field(
                $value,
                concat!(stringify!($ty), ".", stringify!($field)),
            )?;)*
            Ok(p)
        })()
    };
}

/// Declares Pod parameter structs and the list of them for the layout test.
macro_rules! param_structs {
    ($($(#[$doc:meta])* $name:ident in $file:literal { $($field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
            pub struct $name { $(pub $field: $ty),* }
        )*

        /// Every parameter struct: (name, shader file, size, (member, offset)...), for the test
        /// that holds them against their WGSL twins.
        pub fn layouts() -> Vec<(&'static str, &'static str, usize, Vec<(&'static str, usize)>)> {
            vec![$((
                stringify!($name),
                $file,
                std::mem::size_of::<$name>(),
                vec![$((stringify!($field), std::mem::offset_of!($name, $field))),*],
            )),*]
        }
    };
}

param_structs! {
    /// gemm.wgsl: C = A·B (+ bias) (+ C) over strided operands (element offsets and strides).
    GemmParams in "gemm.wgsl" {
        m: u32, n: u32, k: u32,
        a_off: u32, a_rs: u32, a_cs: u32,
        b_off: u32, b_rs: u32, b_cs: u32,
        c_off: u32, ldc: u32,
        accumulate: u32, use_bias: u32, bias_off: u32,
    }
    /// recurrent.wgsl forward step kernels.
    ForwardStepParams in "recurrent.wgsl" {
        batch: u32, hidden: u32, t: u32, train: u32,
        read_slot: u32, write_slot: u32,
        out_col: u32, out_stride: u32,
        xproj_t: u32, out_t: u32,
    }
    /// recurrent.wgsl backward step kernels.
    BackwardStepParams in "recurrent.wgsl" {
        batch: u32, hidden: u32, t: u32,
        has_prev: u32, t_prev: u32, finish: u32,
        prev_slot: u32, cur_slot: u32,
        carry_read: u32, carry_write: u32,
        dout_col: u32, dout_stride: u32,
        dgx_off: u32, dgh_off: u32,
    }
    /// reduce.wgsl column sums.
    ColumnSumParams in "reduce.wgsl" { rows: u32, cols: u32, src_off: u32, dst_off: u32 }
    /// util.wgsl fill.
    FillParams in "util.wgsl" { len: u32, value: f32 }
    /// util.wgsl transpose of the two leading axes.
    TransposeParams in "util.wgsl" { a: u32, b: u32, f: u32 }
    /// util.wgsl f32 rows to f16 pairs.
    PackParams in "util.wgsl" { rows: u32, cols: u32 }
}
