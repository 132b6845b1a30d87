//! Parameters in PyTorch's layout and state_dict names; seeded init; safetensors I/O.

use crate::config::RnnConfig;
use crate::error::{check_shape, try_zeros, Result, RnnError};
use crate::scalar::Scalar;
use crate::tensorfile;
use ndarray::{Array1, Array2, ArrayD, ArrayViewMutD};
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// Weights of one layer and direction, exactly as torch stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<F> {
    /// (G·H, input features of the layer)
    pub w_ih: Array2<F>,
    /// (G·H, H)
    pub w_hh: Array2<F>,
    /// (G·H), absent without bias
    pub b_ih: Option<Array1<F>>,
    /// (G·H), absent without bias
    pub b_hh: Option<Array1<F>>,
}

/// All parameters of a network; `layers[layer * D + direction]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnParams<F> {
    pub config: RnnConfig,
    pub layers: Vec<LayerParams<F>>,
}

/// Which of the four tensors of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    WeightIh,
    WeightHh,
    BiasIh,
    BiasHh,
}

impl ParamKind {
    const ALL: [ParamKind; 4] = [
        ParamKind::WeightIh,
        ParamKind::WeightHh,
        ParamKind::BiasIh,
        ParamKind::BiasHh,
    ];

    fn prefix(self) -> &'static str {
        match self {
            ParamKind::WeightIh => "weight_ih",
            ParamKind::WeightHh => "weight_hh",
            ParamKind::BiasIh => "bias_ih",
            ParamKind::BiasHh => "bias_hh",
        }
    }
}

/// torch's state_dict name, e.g. `weight_hh_l1_reverse`.
pub fn param_name(kind: ParamKind, layer: usize, direction: usize) -> String {
    let suffix = if direction == 1 { "_reverse" } else { "" };
    format!("{}_l{layer}{suffix}", kind.prefix())
}

/// The number of scalar parameters of `config`, in checked arithmetic: an error naming the
/// sizes when it does not fit in memory's address range.
pub fn param_count(config: &RnnConfig) -> Result<usize> {
    config.validate()?;
    let too_large = || {
        RnnError::Config(format!(
            "input_size {}, hidden_size {}, num_layers {}: the parameters' size overflows",
            config.input_size, config.hidden_size, config.num_layers
        ))
    };
    let rows = config
        .cell
        .gates()
        .checked_mul(config.hidden_size)
        .ok_or_else(too_large)?;
    let mut total = 0usize;
    for layer in [0, 1].into_iter().take(config.num_layers) {
        let input = layer_input_checked(config, layer).ok_or_else(too_large)?;
        let per_direction = input
            .checked_add(config.hidden_size)
            .and_then(|n| n.checked_add(if config.bias { 2 } else { 0 }))
            .and_then(|n| n.checked_mul(rows))
            .and_then(|n| n.checked_mul(config.num_directions()))
            .ok_or_else(too_large)?;
        let layers = if layer == 0 { 1 } else { config.num_layers - 1 };
        total = per_direction
            .checked_mul(layers)
            .and_then(|n| n.checked_add(total))
            .ok_or_else(too_large)?;
    }
    let bytes = total.checked_mul(std::mem::size_of::<f64>());
    if bytes.is_none_or(|b| b > isize::MAX as usize) {
        return Err(too_large());
    }
    Ok(total)
}

/// [`RnnConfig::layer_input_size`] in checked arithmetic.
fn layer_input_checked(config: &RnnConfig, layer: usize) -> Option<usize> {
    if layer == 0 {
        Some(config.input_size)
    } else {
        config.hidden_size.checked_mul(config.num_directions())
    }
}

/// Every tensor's torch name and shape under `config`, in state_dict order, produced lazily:
/// a config read from a file is compared with the file's tensors one by one, so a huge layer
/// count stops at the first missing tensor. Call [`param_count`] first (it checks the sizes).
pub fn param_shapes(config: &RnnConfig) -> impl Iterator<Item = (String, Vec<usize>)> {
    let (d, rows, hidden) = (
        config.num_directions(),
        config.gate_rows(),
        config.hidden_size,
    );
    let first_input = config.input_size;
    let kinds = if config.bias { 4 } else { 2 };
    (0..config.num_layers).flat_map(move |layer| {
        let input = if layer == 0 { first_input } else { d * hidden };
        (0..d).flat_map(move |dir| {
            ParamKind::ALL[..kinds].iter().map(move |&kind| {
                let shape = match kind {
                    ParamKind::WeightIh => vec![rows, input],
                    ParamKind::WeightHh => vec![rows, hidden],
                    ParamKind::BiasIh | ParamKind::BiasHh => vec![rows],
                };
                (param_name(kind, layer, dir), shape)
            })
        })
    })
}

/// Checks `tensors` against `expected` (name, shape) pairs: a missing, misshaped or extra
/// tensor is an error naming it. Nothing is allocated beyond the names it matched, so an
/// `expected` derived from a hostile config costs no more than the tensors at hand.
pub fn check_named_shapes<F>(
    expected: impl IntoIterator<Item = (String, Vec<usize>)>,
    tensors: &HashMap<String, ArrayD<F>>,
) -> Result<()> {
    let mut matched = std::collections::HashSet::new();
    for (name, shape) in expected {
        let tensor = tensors
            .get(&name)
            .ok_or_else(|| RnnError::MissingTensor(name.clone()))?;
        check_shape(&name, &shape, tensor.shape())?;
        matched.insert(name);
    }
    match tensors.keys().filter(|k| !matched.contains(*k)).min() {
        Some(extra) => Err(RnnError::UnexpectedTensor(extra.clone())),
        None => Ok(()),
    }
}

impl<F: Scalar> RnnParams<F> {
    /// All-zero parameters of the right shapes (e.g. to accumulate gradients).
    pub fn zeros(config: &RnnConfig) -> Result<Self> {
        let total = param_count(config)?;
        // All of it asked for at once first (and given back): many layers of small tensors
        // whose sum does not fit are refused here, before any of them is allocated.
        let count = config.num_layers * config.num_directions();
        let too_large = |tensor: &str, shape: Vec<usize>, bytes| RnnError::Allocation {
            tensor: tensor.to_string(),
            shape,
            bytes,
        };
        let bytes = total.checked_mul(size_of::<F>());
        Vec::<F>::new()
            .try_reserve_exact(total)
            .map_err(|_| too_large("parameters", vec![total], bytes))?;
        let mut layers = Vec::new();
        layers
            .try_reserve_exact(count)
            .map_err(|_| too_large("layer list", vec![count], None))?;
        let rows = config.gate_rows();
        let h = config.hidden_size;
        let d = config.num_directions();
        // Fallible allocations: a valid config too large for memory is an error naming the
        // first tensor that did not fit, not an abort.
        let bias = |kind, layer, dir| -> Result<Option<Array1<F>>> {
            config
                .bias
                .then(|| try_zeros(&param_name(kind, layer, dir), rows))
                .transpose()
        };
        for i in 0..count {
            let (layer, dir) = (i / d, i % d);
            let input = config.layer_input_size(layer);
            layers.push(LayerParams {
                w_ih: try_zeros(&param_name(ParamKind::WeightIh, layer, dir), (rows, input))?,
                w_hh: try_zeros(&param_name(ParamKind::WeightHh, layer, dir), (rows, h))?,
                b_ih: bias(ParamKind::BiasIh, layer, dir)?,
                b_hh: bias(ParamKind::BiasHh, layer, dir)?,
            });
        }
        Ok(RnnParams {
            config: config.clone(),
            layers,
        })
    }

    /// torch's default init: every parameter from U(−1/√H, 1/√H), reproducible from `seed`.
    pub fn init(config: &RnnConfig, seed: u64) -> Result<Self> {
        let mut params = Self::zeros(config)?;
        let bound = 1.0 / (config.hidden_size as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        params.for_each_mut(|_, mut a| {
            a.mapv_inplace(|_| F::from_f64(rng.random_range(-bound..bound)));
        });
        Ok(params)
    }

    /// Parameters of `layer` in `direction` (0 forward, 1 reverse); an error outside the config.
    pub fn layer(&self, layer: usize, direction: usize) -> Result<&LayerParams<F>> {
        let d = self.config.num_directions();
        let index = (layer < self.config.num_layers && direction < d)
            .then(|| layer * d + direction)
            .and_then(|i| self.layers.get(i));
        index.ok_or_else(|| {
            RnnError::Config(format!(
                "layer {layer}, direction {direction} is outside {} layers × {d} directions \
                 ({} held)",
                self.config.num_layers,
                self.layers.len()
            ))
        })
    }

    /// Every tensor with its torch name, in torch's state_dict order.
    pub fn named(&self) -> Vec<(String, ArrayD<F>)> {
        let mut out = Vec::new();
        self.visit(|name, kind, p| {
            let a = match kind {
                ParamKind::WeightIh => Some(p.w_ih.clone().into_dyn()),
                ParamKind::WeightHh => Some(p.w_hh.clone().into_dyn()),
                ParamKind::BiasIh => p.b_ih.clone().map(|b| b.into_dyn()),
                ParamKind::BiasHh => p.b_hh.clone().map(|b| b.into_dyn()),
            };
            if let Some(a) = a {
                out.push((name, a));
            }
        });
        out
    }

    /// Calls `f(name, tensor)` on every tensor, mutably, in state_dict order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&str, ArrayViewMutD<'_, F>)) {
        let d = self.config.num_directions();
        for (i, p) in self.layers.iter_mut().enumerate() {
            for kind in ParamKind::ALL {
                let name = param_name(kind, i / d, i % d);
                let view = match kind {
                    ParamKind::WeightIh => Some(p.w_ih.view_mut().into_dyn()),
                    ParamKind::WeightHh => Some(p.w_hh.view_mut().into_dyn()),
                    ParamKind::BiasIh => p.b_ih.as_mut().map(|b| b.view_mut().into_dyn()),
                    ParamKind::BiasHh => p.b_hh.as_mut().map(|b| b.view_mut().into_dyn()),
                };
                if let Some(view) = view {
                    f(&name, view);
                }
            }
        }
    }

    fn visit(&self, mut f: impl FnMut(String, ParamKind, &LayerParams<F>)) {
        let d = self.config.num_directions();
        for (i, p) in self.layers.iter().enumerate() {
            for kind in ParamKind::ALL {
                f(param_name(kind, i / d, i % d), kind, p);
            }
        }
    }

    /// Builds parameters from named tensors (torch state_dict). A missing, extra, misshaped or
    /// non-finite tensor is an error naming it. The config's sizes are checked against the
    /// tensors before anything of their size is allocated.
    pub fn from_named(config: &RnnConfig, tensors: &HashMap<String, ArrayD<F>>) -> Result<Self> {
        param_count(config)?;
        check_named_shapes(param_shapes(config), tensors)?;
        let mut params = Self::zeros(config)?;
        params.for_each_mut(|name, mut target| target.assign(&tensors[name]));
        crate::batch::check_params(&params)?;
        Ok(params)
    }

    /// Loads a torch state_dict saved as safetensors (f32, f64, or i64 values exact in `F`).
    pub fn load_safetensors(config: &RnnConfig, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = tensorfile::read_bytes(path)?;
        let file = tensorfile::parse(path, &bytes)?;
        Self::from_named(config, &tensorfile::all_arrays(&file)?)
    }

    /// Saves in torch state_dict naming, in `F`'s dtype.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        tensorfile::write_arrays(path.as_ref(), &self.named(), None)
    }

    /// The same parameters in another float type.
    pub fn cast<G: Scalar>(&self) -> RnnParams<G> {
        let c = |a: &Array2<F>| a.mapv(|v| G::from_f64(v.to_f64()));
        let cb = |b: &Option<Array1<F>>| b.as_ref().map(|b| b.mapv(|v| G::from_f64(v.to_f64())));
        RnnParams {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|p| LayerParams {
                    w_ih: c(&p.w_ih),
                    w_hh: c(&p.w_hh),
                    b_ih: cb(&p.b_ih),
                    b_hh: cb(&p.b_hh),
                })
                .collect(),
        }
    }

    /// Number of scalar parameters.
    pub fn len(&self) -> usize {
        self.named().iter().map(|(_, a)| a.len()).sum()
    }

    /// Whether there are no parameters (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
