//! Loading a model, its tokenizer and its device from command-line args.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_core::Device;
use mm_engine::tokenizer::Tokenizer;
use mm_formats::{open_source, WeightSource};
use mm_models::{load_model, DecoderModel};

use crate::args::{DeviceKind, ModelArgs, PrecisionArgs};

/// Everything a command needs to run a model.
pub struct Loaded {
    /// The checkpoint (config, metadata); not every command reads it.
    #[allow(dead_code)]
    pub source: Box<dyn WeightSource>,
    pub model: DecoderModel,
    pub tokenizer: Tokenizer,
    pub ctx: usize,
}

/// The device for `kind` at the requested precision; GPU backends exist
/// only in builds with their feature.
pub fn device(kind: DeviceKind, p: PrecisionArgs) -> Result<Device> {
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(match (p.exact, p.fast_activations) {
        (true, _) => CpuBackend::exact(),
        (_, true) => CpuBackend::with_activations(ActPrecision::Int8),
        _ => CpuBackend::new(),
    });
    match kind {
        DeviceKind::Auto => match cuda(cpu.clone(), p.exact) {
            Ok(d) => Ok(d),
            Err(e) => {
                if cfg!(feature = "cuda") {
                    tracing::info!("no usable CUDA GPU: {e:#}");
                }
                match wgpu(cpu.clone(), true) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        if cfg!(any(feature = "cuda", feature = "wgpu")) {
                            tracing::info!("no usable GPU, running on the CPU: {e:#}");
                        }
                        Ok(Device::new(cpu.clone(), cpu))
                    }
                }
            }
        },
        DeviceKind::Cpu => Ok(Device::new(cpu.clone(), cpu)),
        DeviceKind::Cuda => cuda(cpu, p.exact),
        DeviceKind::Wgpu => wgpu(cpu, false),
    }
}

/// A Vulkan or Metal adapter through wgpu as the primary backend, the CPU
/// running what it does not. `hardware`: refuse a CPU emulation of a GPU
/// (lavapipe), which `--device auto` passes over for the CPU backend.
#[cfg(feature = "wgpu")]
fn wgpu(cpu: Arc<dyn mm_core::Backend>, hardware: bool) -> Result<Device> {
    let gpu = mm_backend_wgpu::WgpuBackend::new().context("--device wgpu")?;
    if hardware && gpu.is_software() {
        bail!("{} emulates a GPU on the CPU", gpu.describe());
    }
    tracing::info!("GPU: {}", gpu.describe());
    Ok(Device::new(Arc::new(gpu), cpu))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_cpu: Arc<dyn mm_core::Backend>, _hardware: bool) -> Result<Device> {
    bail!("this build has no wgpu backend (rebuild with `--features wgpu`)")
}

/// GPU 0 as the primary backend, the CPU running what it does not.
#[cfg(feature = "cuda")]
fn cuda(cpu: Arc<dyn mm_core::Backend>, exact: bool) -> Result<Device> {
    let mut gpu = mm_backend_cuda::CudaBackend::new(0).context("--device cuda")?;
    if exact {
        gpu = gpu.exact();
    }
    tracing::info!("GPU: {}", gpu.describe());
    Ok(Device::new(Arc::new(gpu), cpu))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_cpu: Arc<dyn mm_core::Backend>, _exact: bool) -> Result<Device> {
    bail!("this build has no CUDA backend (rebuild with `--features cuda`)")
}

/// Opens the checkpoint only (for `info`).
pub fn open(args: &ModelArgs) -> Result<(std::path::PathBuf, Box<dyn WeightSource>)> {
    let path = mm_engine::resolve::resolve_model(args.model.as_deref())?;
    let src = open_source(&path).with_context(|| format!("opening model {}", path.display()))?;
    Ok((path, src))
}

/// Builds the tokenizer of an opened checkpoint.
pub fn tokenizer(path: &Path, source: &dyn WeightSource) -> Result<Tokenizer> {
    mm_engine::tokenizer::load_for(path, source)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))
}

/// Builds the model of an opened checkpoint (with a progress bar) and
/// settles the KV-cache length from `args.ctx`.
pub fn build(
    path: &Path,
    source: &dyn WeightSource,
    args: &ModelArgs,
) -> Result<(DecoderModel, usize)> {
    let max = source.config().max_position_embeddings;
    let ctx = match args.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(c) if c > max => bail!("--ctx {c} exceeds the model's context length {max}"),
        Some(c) => c,
        None => max.min(4096),
    };
    let dev = device(args.device, args.precision)?;
    let bar = ProgressBar::new(source.config().num_layers as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} layers")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("loading");
    let model = load_model(source, &dev, &|done, _| bar.set_position(done as u64))
        .with_context(|| format!("loading model {}", path.display()))?;
    bar.finish_and_clear();
    Ok((model, ctx))
}

/// Opens the checkpoint, builds the tokenizer and the model (with a progress bar).
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let (path, source) = open(args)?;
    let tokenizer = tokenizer(&path, source.as_ref())?;
    let (model, ctx) = build(&path, source.as_ref(), args)?;
    Ok(Loaded {
        source,
        model,
        tokenizer,
        ctx,
    })
}
