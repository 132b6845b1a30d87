//! SGD with momentum and Adam over lists of flat parameter tensors, with torch's semantics
//! (`torch.optim.SGD`, `torch.optim.Adam` single-tensor path, `foreach=False`).

use crate::error::{Result, RnnError};
use crate::scalar::Scalar;

/// `torch.optim.SGD` hyperparameters (no Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
}

impl SgdConfig {
    /// Plain SGD with momentum, no dampening or weight decay.
    pub fn new(lr: f64, momentum: f64) -> Self {
        SgdConfig {
            lr,
            momentum,
            dampening: 0.0,
            weight_decay: 0.0,
        }
    }
}

/// `torch.optim.Adam` hyperparameters (no amsgrad). eps is added outside the square root.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamConfig {
    /// torch's defaults (betas 0.9, 0.999, eps 1e-8) with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// (step_size = lr / (1 − β1ᵗ), √(1 − β2ᵗ)) for step t ≥ 1, as torch computes them.
    pub fn bias_corrections(&self, step: u64) -> (f64, f64) {
        let t = step as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        (self.lr / correction1, correction2.sqrt())
    }
}

/// Which optimizer and its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

impl OptimizerConfig {
    /// `sgd` or `adam`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::Adam(_) => "adam",
        }
    }

    /// Names of the per-tensor state buffers, as in torch's optimizer state_dict.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            OptimizerConfig::Sgd(c) if c.momentum == 0.0 => &[],
            OptimizerConfig::Sgd(_) => &["momentum_buffer"],
            OptimizerConfig::Adam(_) => &["exp_avg", "exp_avg_sq"],
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(RnnError::Config(format!(
                "optimizer {what} out of range: {v}"
            )))
        };
        match *self {
            OptimizerConfig::Sgd(c) => {
                if !nonnegative(c.lr) {
                    return bad("lr", c.lr);
                }
                if !nonnegative(c.momentum) {
                    return bad("momentum", c.momentum);
                }
                if !(0.0..=1.0).contains(&c.dampening) {
                    return bad("dampening", c.dampening);
                }
                if !nonnegative(c.weight_decay) {
                    return bad("weight_decay", c.weight_decay);
                }
            }
            OptimizerConfig::Adam(c) => {
                if !nonnegative(c.lr) {
                    return bad("lr", c.lr);
                }
                if !(0.0..1.0).contains(&c.beta1) {
                    return bad("beta1", c.beta1);
                }
                if !(0.0..1.0).contains(&c.beta2) {
                    return bad("beta2", c.beta2);
                }
                if !nonnegative(c.eps) {
                    return bad("eps", c.eps);
                }
                if !nonnegative(c.weight_decay) {
                    return bad("weight_decay", c.weight_decay);
                }
            }
        }
        Ok(())
    }
}

/// An optimizer with its state: `state[k][j]` is state buffer `config.state_names()[k]` of
/// parameter tensor `j`. SGD's momentum buffer starts as a copy of the first gradient (torch).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer<F> {
    pub config: OptimizerConfig,
    /// Number of completed steps.
    pub step: u64,
    pub state: Vec<Vec<Vec<F>>>,
}

impl<F: Scalar> Optimizer<F> {
    /// A fresh optimizer for tensors of the given lengths.
    pub fn new(config: OptimizerConfig, lens: &[usize]) -> Result<Self> {
        config.validate()?;
        let state = config
            .state_names()
            .iter()
            .map(|_| lens.iter().map(|&n| vec![F::zero(); n]).collect())
            .collect();
        Ok(Optimizer {
            config,
            step: 0,
            state,
        })
    }

    /// Checks that the state holds one buffer per name of [`OptimizerConfig::state_names`].
    pub(crate) fn check_buffers(&self) -> Result<()> {
        let names = self.config.state_names();
        if self.state.len() != names.len() {
            return Err(RnnError::Config(format!(
                "{} optimizer state holds {} buffers, expected {}",
                self.config.name(),
                self.state.len(),
                names.len()
            )));
        }
        Ok(())
    }

    /// Checks that every state buffer holds one tensor per entry of `lens`, of that length.
    pub fn check_lens(&self, lens: &[usize]) -> Result<()> {
        self.check_buffers()?;
        for (name, buffers) in self.config.state_names().iter().zip(&self.state) {
            if buffers.len() != lens.len() {
                return Err(RnnError::Config(format!(
                    "optimizer state `{name}` holds {} tensors, the parameters {}",
                    buffers.len(),
                    lens.len()
                )));
            }
            for (j, (s, &len)) in buffers.iter().zip(lens).enumerate() {
                if s.len() != len {
                    return Err(RnnError::shape(
                        format!("optimizer state `{name}` {j}"),
                        &[len],
                        &[s.len()],
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that `params` and `grads` match each other and the state.
    fn check(&self, params: &[&mut [F]], grads: &[&[F]]) -> Result<()> {
        if params.len() != grads.len() {
            return Err(RnnError::Config(format!(
                "{} parameter tensors but {} gradients",
                params.len(),
                grads.len()
            )));
        }
        for (j, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.len() != g.len() {
                return Err(RnnError::shape(
                    format!("gradient {j}"),
                    &[p.len()],
                    &[g.len()],
                ));
            }
        }
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        self.check_lens(&lens)
    }

    /// One update of every tensor in place.
    pub fn step(&mut self, params: &mut [&mut [F]], grads: &[&[F]]) -> Result<()> {
        self.check(params, grads)?;
        self.step += 1;
        match self.config {
            OptimizerConfig::Sgd(c) => {
                let lr = F::from_f64(c.lr);
                let wd = F::from_f64(c.weight_decay);
                let momentum = F::from_f64(c.momentum);
                let keep = F::from_f64(1.0 - c.dampening);
                let first = self.step == 1;
                for (j, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    for i in 0..p.len() {
                        let mut d = g[i];
                        if c.weight_decay != 0.0 {
                            d += wd * p[i];
                        }
                        if c.momentum != 0.0 {
                            let buf = &mut self.state[0][j][i];
                            *buf = if first { d } else { momentum * *buf + keep * d };
                            d = *buf;
                        }
                        p[i] -= lr * d;
                    }
                }
            }
            OptimizerConfig::Adam(c) => {
                let (step_size, correction2_sqrt) = c.bias_corrections(self.step);
                let (step_size, correction2_sqrt) =
                    (F::from_f64(step_size), F::from_f64(correction2_sqrt));
                let wd = F::from_f64(c.weight_decay);
                let w1 = F::from_f64(1.0 - c.beta1);
                let beta2 = F::from_f64(c.beta2);
                let w2 = F::from_f64(1.0 - c.beta2);
                let eps = F::from_f64(c.eps);
                let (m_all, v_all) = self.state.split_at_mut(1);
                for (j, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    let (m, v) = (&mut m_all[0][j], &mut v_all[0][j]);
                    for i in 0..p.len() {
                        let mut grad = g[i];
                        if c.weight_decay != 0.0 {
                            grad += wd * p[i];
                        }
                        m[i] = lerp(m[i], grad, w1);
                        v[i] = v[i] * beta2 + w2 * grad * grad;
                        let denom = v[i].sqrt() / correction2_sqrt + eps;
                        p[i] -= step_size * (m[i] / denom);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `v` is a number ≥ 0 (NaN is not).
fn nonnegative(v: f64) -> bool {
    v >= 0.0
}

/// torch's `lerp(start, end, weight)`: `start + w·(end − start)` for w < 0.5, else
/// `end − (end − start)·(1 − w)`.
pub fn lerp<F: Scalar>(start: F, end: F, weight: F) -> F {
    let half = F::from_f64(0.5);
    if weight < half {
        start + weight * (end - start)
    } else {
        end - (end - start) * (F::one() - weight)
    }
}
