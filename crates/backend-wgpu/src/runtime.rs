//! One GPU through wgpu: the adapter and its capability tier, the kernel
//! pipelines (built once per kernel variant), and the command encoder that
//! every op records its dispatches into.
//!
//! Ops never wait for the GPU. Their dispatches go into one open compute
//! pass (wgpu places the barriers between dispatches that share a buffer);
//! the encoder is submitted when a result is read back, and every
//! [`FLUSH_EVERY`] dispatches so the GPU starts while the host records the
//! rest. Reading back is the only synchronization.
//!
//! A dispatch costs the host little: its parameters travel as immediates
//! (push constants; Metal's `setBytes`), its bind group comes from a cache
//! keyed by kernel and buffers, and buffers come from a pool ([`Pool`]),
//! so the buffers of one decode step are those of the last and their bind
//! groups are found, not made.
//!
//! wgpu reports a failed command (a validation error, memory running out)
//! to a handler instead of the call that caused it; the handler keeps the
//! first message, and the next submission or read-back returns it as this
//! backend's error, so a bad input fails the op that meets it instead of
//! aborting the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mm_core::{Error, Result};

use crate::shader::{self, Variant};

/// What the device can do, chosen when it is opened; every tier runs every
/// op, each with its own kernel variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// f32 arithmetic, reductions through workgroup memory: any adapter
    /// (Mesa's lavapipe in CI).
    T0,
    /// T0 plus subgroup reductions (`subgroupAdd`, Metal's `simd_sum`),
    /// written for any subgroup size.
    T1,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::T0 => "T0",
            Tier::T1 => "T1",
        }
    }
}

/// Dispatches recorded before the encoder is submitted unasked.
pub const FLUSH_EVERY: usize = 256;

/// The largest parameter block of a kernel, in bytes (immediates).
pub const MAX_PARAMS_BYTES: u32 = 64;

/// Bytes of free buffers the pool keeps; past it, released ones are freed.
const POOL_BYTES: u64 = 1 << 30;

/// Bind groups kept; past it the cache starts over.
const BIND_GROUPS: usize = 4096;

/// Storage buffers no tensor holds any more, kept by size for the next
/// tensor of that size. A released buffer waits in `limbo` until the
/// commands recorded so far are submitted: they may still read it, and a
/// buffer taken from `free` is written (by a kernel or by
/// `Queue::write_buffer`) only after everything submitted before.
#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    limbo: Vec<wgpu::Buffer>,
    bytes: u64,
}

type BindKey = (usize, Vec<(u32, wgpu::Buffer)>);

/// A compiled kernel variant.
pub struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    name: String,
}

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: usize,
}

/// The opened device.
pub struct Runtime {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub tier: Tier,
    pub limits: wgpu::Limits,
    /// Kernels built with naga's bounds checks (tests) or without (speed).
    checked: bool,
    /// Bytes per binding ([`Runtime::binding_cap`]), and per weight
    /// binding ([`Runtime::weight_cap`]).
    cap: u64,
    weight_cap: u64,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    /// The last upload under each name with the tag it was made from
    /// ([`Runtime::upload_cached`]).
    uploads: Mutex<HashMap<&'static str, (Vec<u8>, wgpu::Buffer)>>,
    pool: Mutex<Pool>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// The read-back buffer, kept for the next read that fits.
    staging: Mutex<Option<wgpu::Buffer>>,
    pending: Mutex<Pending>,
    error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}, {})",
            self.info.name,
            self.info.backend,
            self.tier.name()
        )
    }
}

fn err(what: impl std::fmt::Display) -> Error {
    Error::Other(format!("wgpu: {what}"))
}

/// Options for [`Runtime::open`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The adapter whose name contains this (case-insensitive); default:
    /// the first hardware adapter, else the first software one.
    pub adapter: Option<String>,
    /// The highest tier to use (default: the best the adapter allows).
    pub max_tier: Option<Tier>,
    /// Keep naga's bounds checks in the kernels (tests do).
    pub checked: bool,
    /// A lower limit of bytes per binding for weights than the adapter's
    /// (tests split weights into shards with it).
    pub max_weight_binding: Option<u64>,
}

impl OpenOptions {
    /// Defaults, overridden by `MM_WGPU_ADAPTER` (an adapter name part) and
    /// `MM_WGPU_TIER` (0 or 1).
    pub fn from_env() -> Self {
        let adapter = std::env::var("MM_WGPU_ADAPTER")
            .ok()
            .filter(|s| !s.is_empty());
        let max_tier = match std::env::var("MM_WGPU_TIER").ok().as_deref() {
            Some("0") => Some(Tier::T0),
            Some("1") => Some(Tier::T1),
            _ => None,
        };
        Self {
            adapter,
            max_tier,
            checked: false,
            max_weight_binding: None,
        }
    }
}

fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL)
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

impl Runtime {
    /// Opens an adapter (see [`OpenOptions`]); an error says why none is
    /// usable (no Vulkan/Metal driver, no adapter of the name asked for).
    pub fn open(opts: &OpenOptions) -> Result<Arc<Self>> {
        let instance = instance();
        let mut all = pollster::block_on(instance.enumerate_adapters(backends()));
        if all.is_empty() {
            return Err(err(
                "no Vulkan or Metal adapter found (is a Vulkan driver installed? \
                 Mesa's lavapipe: apt install mesa-vulkan-drivers)",
            ));
        }
        let software = |a: &wgpu::Adapter| a.get_info().device_type == wgpu::DeviceType::Cpu;
        all.sort_by_key(|a| software(a));
        let adapter = match &opts.adapter {
            Some(want) => {
                let w = want.to_lowercase();
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| err(format!("no adapter named like {want:?} among {names:?}")))?
            }
            None => all.swap_remove(0),
        };
        let info = adapter.get_info();
        let have = adapter.features();
        let t1 = wgpu::Features::SUBGROUP;
        let mut tier = if have.contains(t1) {
            Tier::T1
        } else {
            Tier::T0
        };
        if let Some(max) = opts.max_tier {
            tier = tier.min(max);
        }
        // Kernel parameters are immediates (push constants): every Vulkan
        // device has 128 bytes of them, Metal has setBytes.
        let imm = wgpu::Features::IMMEDIATES;
        if !have.contains(imm) || adapter.limits().max_immediate_size < MAX_PARAMS_BYTES {
            return Err(err(format!(
                "{}: no immediates (push constants) of {MAX_PARAMS_BYTES} bytes",
                info.name
            )));
        }
        let features = if tier >= Tier::T1 { t1 | imm } else { imm };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("metal-marlin"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| err(format!("opening {}: {e}", info.name)))?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        Ok(Arc::new(Self {
            device,
            queue,
            info,
            tier,
            cap: binding_cap(&limits),
            weight_cap: binding_cap(&limits).min(
                opts.max_weight_binding
                    .map_or(u64::MAX, |m| m.max(256) / 4 * 4),
            ),
            limits,
            checked: opts.checked,
            kernels: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            bind_groups: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
            pending: Mutex::new(Pending::default()),
            error,
        }))
    }

    /// "name (backend, tier)".
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }

    /// Whether the adapter is a CPU emulation (lavapipe), slower than the
    /// CPU backend: `--device auto` passes it over.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The error wgpu reported since the last check, if any.
    pub fn check(&self) -> Result<()> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(e) => Err(err(e)),
            None => Ok(()),
        }
    }

    /// The kernel of `v`, built on first use.
    pub fn kernel(&self, v: &Variant) -> Result<Arc<Kernel>> {
        let key = v.key();
        let mut map = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = map.get(&key) {
            return Ok(k.clone());
        }
        let source = shader::render(v, self.tier)?;
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&key),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = if self.checked {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel bounds its own indices (the checked
            // build, in the tests, runs the same kernels with naga's
            // clamps and must give the same results).
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some(v.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(err(format!("building kernel {key}: {e}")));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let k = Arc::new(Kernel {
            pipeline,
            layout,
            name: key.clone(),
        });
        map.insert(key, k.clone());
        Ok(k)
    }

    /// The most bytes one buffer binding may hold here.
    pub fn binding_cap(&self) -> u64 {
        self.cap
    }

    /// The most bytes a weight's buffer may hold before the weight is
    /// split into shards: [`Runtime::binding_cap`] unless the opener asked
    /// for less.
    pub fn weight_cap(&self) -> u64 {
        self.weight_cap
    }

    /// `bytes` rounded up to a whole number of words (at least one), or an
    /// error naming `what` when that passes the adapter's limit per binding.
    fn buffer_size(&self, bytes: u64, what: &str) -> Result<u64> {
        let size = bytes.max(4).div_ceil(4) * 4;
        let cap = self.cap;
        if size > cap {
            return Err(err(format!(
                "{what} needs a buffer of {size} bytes, past this adapter's limit of {cap} \
                 bytes per binding ({})",
                self.info.name
            )));
        }
        Ok(size)
    }

    /// A storage buffer of `bytes` (rounded up to 4) from the pool, its
    /// contents undefined (a kernel writes all of it), or an error naming a
    /// size past the adapter's limits. Hand it back with [`Runtime::give`].
    pub fn take(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = self.buffer_size(bytes, what)?;
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = pool.free.get_mut(&size).and_then(|v| v.pop()) {
                pool.bytes -= size;
                return Ok(b);
            }
        }
        self.alloc(bytes, what)
    }

    /// Returns a buffer of [`Runtime::take`] to the pool once the commands
    /// recorded so far are submitted.
    pub fn give(&self, buf: wgpu::Buffer) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.limbo.push(buf);
    }

    /// A pooled buffer holding `data`, written before the next submitted
    /// commands run (hand it back with [`Runtime::give`]).
    pub fn take_filled(&self, data: &[u8], what: &str) -> Result<wgpu::Buffer> {
        let buf = self.take(data.len() as u64, what)?;
        let whole = data.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buf, 0, &data[..whole]);
        }
        if whole < data.len() {
            let mut tail = [0u8; 4];
            tail[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.queue.write_buffer(&buf, whole as u64, &tail);
        }
        Ok(buf)
    }

    /// A zeroed storage buffer of `bytes` (rounded up to 4), or an error
    /// naming a size past the adapter's limits.
    pub fn alloc(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = self.buffer_size(bytes, what)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (padded with zeros to 4 bytes).
    pub fn upload(&self, data: &[u8], what: &str) -> Result<wgpu::Buffer> {
        let size = self.buffer_size(data.len() as u64, what)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buf
                .get_mapped_range_mut(..)
                .map_err(|e| err(format!("mapping {what}: {e}")))?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        buf.unmap();
        Ok(buf)
    }

    /// The buffer last uploaded under `what` when it was made from the same
    /// `tag`, else a new upload of `make()` (kept for the next call): the
    /// layers of a step upload the same slots, block tables and RoPE
    /// angles once instead of once per layer. Buffers are read-only to the
    /// kernels, so a cached one is never changed under a recorded dispatch.
    pub fn upload_cached(
        &self,
        what: &'static str,
        tag: &[u8],
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<wgpu::Buffer> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, b)) = map.get(what) {
            if t.as_slice() == tag {
                return Ok(b.clone());
            }
        }
        let buf = self.take_filled(&make(), what)?;
        if let Some((_, old)) = map.insert(what, (tag.to_vec(), buf.clone())) {
            self.give(old);
        }
        Ok(buf)
    }

    /// Records `kernel` over `groups` workgroups: the parameters `params`
    /// (u32 words, the kernel's `P` exactly) as immediates, each buffer of
    /// `buffers` at its binding.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(err(format!(
                "{}: {groups:?} workgroups, past the limit of {max} per dimension",
                kernel.name
            )));
        }
        if params.len() * 4 > MAX_PARAMS_BYTES as usize {
            return Err(err(format!(
                "{}: {} parameter words",
                kernel.name,
                params.len()
            )));
        }
        let group = self.bind_group(kernel, buffers);
        let flush = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.pass.is_none() {
                let enc = p.encoder.get_or_insert_with(|| {
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
                });
                let pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                    .forget_lifetime();
                p.pass = Some(pass);
            }
            let pass = p.pass.as_mut().expect("a pass was just opened");
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &group, &[]);
            if !params.is_empty() {
                pass.set_immediates(0, bytemuck::cast_slice(params));
            }
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            p.dispatches += 1;
            p.dispatches >= FLUSH_EVERY
        };
        if flush {
            self.flush()?;
        }
        Ok(())
    }

    /// The bind group of `buffers` for `kernel`, made on first use.
    fn bind_group(&self, kernel: &Kernel, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let key: BindKey = (
            kernel as *const Kernel as usize,
            buffers.iter().map(|(i, b)| (*i, (*b).clone())).collect(),
        );
        let mut cache = self.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = cache.get(&key) {
            return g.clone();
        }
        if cache.len() >= BIND_GROUPS {
            cache.clear();
        }
        let entries: Vec<_> = buffers
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });
        cache.insert(key, group.clone());
        group
    }

    /// Submits what was recorded.
    pub fn flush(&self) -> Result<()> {
        let enc = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.pass = None;
            p.dispatches = 0;
            p.encoder.take()
        };
        if let Some(enc) = enc {
            self.queue.submit([enc.finish()]);
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let Pool { free, limbo, bytes } = &mut *pool;
        for b in limbo.drain(..) {
            if *bytes + b.size() <= POOL_BYTES {
                *bytes += b.size();
                free.entry(b.size()).or_default().push(b);
            }
        }
        drop(pool);
        self.check()
    }

    /// Records a copy of `bytes` bytes of `src` from `src_off` into `dst`
    /// at `dst_off` (offsets and size multiples of 4).
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.pass = None;
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        enc.copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
        Ok(())
    }

    /// `bytes` bytes of `buf` from `offset` (multiples of 4), after every
    /// op recorded so far.
    pub fn read(&self, buf: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        self.read_ranges(buf, &[(offset, bytes)])
    }

    /// The byte ranges `(offset, bytes)` of `buf` (multiples of 4), one
    /// after another, after every op recorded so far: one copy each into
    /// one staging buffer, one wait.
    pub fn read_ranges(&self, buf: &wgpu::Buffer, ranges: &[(u64, u64)]) -> Result<Vec<u8>> {
        let bytes: u64 = ranges.iter().map(|r| r.1).sum();
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let mut kept = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let staging = match kept.take() {
            Some(b) if b.size() >= bytes => b,
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: bytes.next_power_of_two().max(4096),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let mut at = 0;
        for &(offset, len) in ranges {
            self.copy(buf, offset, &staging, at, len)?;
            at += len;
        }
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| err("the read-back was dropped"))?
            .map_err(|e| err(format!("reading back: {e}")))?;
        self.check()?;
        let out = staging
            .get_mapped_range(..bytes)
            .map_err(|e| err(format!("reading back: {e}")))?
            .to_vec();
        staging.unmap();
        *kept = Some(staging);
        Ok(out)
    }

    /// Waits until the GPU has run everything recorded so far.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("waiting for the GPU: {e}")))?;
        self.check()
    }
}

/// The adapter's limit of bytes per binding, below 4 GiB (Metal
/// miscomputes bindings of 4 GiB or more: naga keeps their sizes in 32
/// bits, wgpu#10306).
fn binding_cap(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .min((1 << 32) - 256)
        / 4
        * 4
}

/// `g` workgroups as `[a, b]` with `a · b ≥ g` and neither past `max`
/// (kernels linearize `(b-index · a + a-index)` and skip the excess).
pub fn spread(g: usize, max: u32) -> [u32; 2] {
    let max = max.max(1) as usize;
    let b = g.div_ceil(max).max(1);
    [g.div_ceil(b) as u32, b as u32]
}

/// Workgroup counts covering `n` items of `per` each, spread over x and y
/// when x alone would pass the per-dimension limit ([`spread`]).
pub fn grid(n: usize, per: usize, max: u32) -> [u32; 3] {
    let [x, y] = spread(n.div_ceil(per.max(1)), max);
    [x, y, 1]
}
