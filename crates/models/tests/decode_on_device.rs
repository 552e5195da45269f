//! A decode step's attention stays on the device: multi-head latent
//! attention (absorbed form), partial RoPE and grouped-query attention make
//! no host round trip, so the CUDA backend can record the step as a graph
//! and replay it.
//!
//! How: [`Resident`], a test backend that keeps every tensor it returns in
//! a buffer of its own (a `DeviceBuffer` as the CUDA backend's, computed by
//! the CPU kernels) and records, as the CUDA backend's graph capture does,
//! what a step run through [`Backend::run_step`] would move between host
//! and device: a host tensor given to an op or uploaded, a buffer read back
//! to the host, and an index array (positions, KV slots, block tables,
//! token ids) that is not one of the step's staged inputs. Inside
//! `run_step` any of these is an error, as a copy to the GPU is inside a
//! capture. The results must equal the CPU backend's bit for bit.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mm_backend_cpu::CpuBackend;
use mm_core::backend::{Backend, Op};
use mm_core::tensor::DeviceBuffer;
use mm_core::{Device, Error, KvDType, KvStore, MoeExperts, MoeRoute, PagedBatch, PagedParams};
use mm_core::{Result, RowKind, SeqSpan, StepInputs, Storage, Tensor, WeightData, WeightFormat};
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel, Step};

/// The inputs of the step being recorded (what the CUDA backend stages).
#[derive(Clone)]
struct Staged {
    ids: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    batch: PagedBatch,
}

#[derive(Default)]
struct State {
    /// Inside `run_step`: the step's inputs.
    recording: Option<Staged>,
    /// What crossed (or would have) inside `run_step`.
    crossings: Vec<String>,
    /// Steps run through `run_step`.
    steps: usize,
}

/// A tensor "on the device": host values only this backend reads.
#[derive(Debug)]
struct Buf {
    data: Vec<f32>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "State({} crossings)", self.crossings.len())
    }
}

impl DeviceBuffer for Buf {
    fn backend(&self) -> &str {
        "resident"
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn to_host(&self) -> Result<Vec<f32>> {
        cross(&self.state, "a tensor read back to the host")?;
        Ok(self.data.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Records `what` when a step is being recorded: an error then.
fn cross(state: &Mutex<State>, what: &str) -> Result<()> {
    let mut s = state.lock().unwrap();
    if s.recording.is_none() {
        return Ok(());
    }
    s.crossings.push(what.to_string());
    Err(Error::Backend {
        backend: "resident".into(),
        reason: format!("{what} inside a recorded step"),
    })
}

/// The test backend (see the module docs).
struct Resident {
    cpu: CpuBackend,
    state: Arc<Mutex<State>>,
}

impl Resident {
    /// `t`'s values as a host tensor for the CPU kernels; a host tensor
    /// given to an op crosses to the device.
    fn host(&self, t: &Tensor) -> Result<Tensor> {
        if let Storage::Device(b) = t.storage() {
            if let Some(b) = b.as_any().downcast_ref::<Buf>() {
                return Tensor::from_vec(t.shape().to_vec(), b.data.clone());
            }
        }
        cross(&self.state, "a host tensor given to an op")?;
        t.to_host()
    }

    /// A CPU result kept on the device.
    fn keep(&self, t: Result<Tensor>) -> Result<Tensor> {
        let t = t?;
        let buf = Buf {
            data: t.to_vec()?,
            state: self.state.clone(),
        };
        Tensor::from_device(t.shape().to_vec(), Arc::new(buf))
    }

    /// An index array an op reads: inside a recorded step it must be the
    /// staged input `pick` names.
    fn index(&self, what: &str, got: &[u32], pick: fn(&Staged) -> &[u32]) -> Result<()> {
        let staged = self.state.lock().unwrap().recording.clone();
        match staged {
            Some(s) if pick(&s) != got => cross(&self.state, &format!("{what} not staged")),
            _ => Ok(()),
        }
    }

    /// A paged batch, as [`Self::index`]: the step's own.
    fn batch(&self, b: &PagedBatch) -> Result<()> {
        let staged = self.state.lock().unwrap().recording.clone();
        match staged {
            Some(s) if s.batch != *b => cross(&self.state, "a paged batch not staged"),
            _ => Ok(()),
        }
    }
}

impl Backend for Resident {
    fn name(&self) -> &str {
        "resident"
    }
    fn supports(&self, _op: Op, _format: Option<WeightFormat>) -> bool {
        true
    }
    fn default_kv_dtype(&self) -> KvDType {
        self.cpu.default_kv_dtype()
    }
    fn prepare(&self, w: &WeightData) -> Result<()> {
        self.cpu.prepare(w)
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        let h = self.host(t)?;
        self.keep(Ok(h))
    }
    fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
        let b = bias.map(|b| self.host(b)).transpose()?;
        self.keep(self.cpu.matmul(&self.host(x)?, w, b.as_ref()))
    }
    fn matmul_rows(
        &self,
        x: &Tensor,
        w: &WeightData,
        bias: Option<&Tensor>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        let b = bias.map(|b| self.host(b)).transpose()?;
        self.keep(self.cpu.matmul_rows(&self.host(x)?, w, b.as_ref(), kinds))
    }
    fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor> {
        self.index("token ids", ids, |s| &s.ids)?;
        self.keep(self.cpu.embedding(ids, table))
    }
    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        self.keep(self.cpu.rms_norm(&self.host(x)?, &self.host(w)?, eps))
    }
    fn rope(
        &self,
        x: &Tensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        mscale: f32,
    ) -> Result<Tensor> {
        self.index("rope positions", positions, |s| &s.positions)?;
        let x = self.host(x)?;
        self.keep(self.cpu.rope(&x, head_dim, positions, inv_freq, mscale))
    }
    fn write_kv(&self, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
        self.index("KV slots", slots, |s| &s.slots)?;
        self.cpu.write_kv(store, slots, &self.host(src)?)
    }
    fn paged_attention(
        &self,
        q: &Tensor,
        k: &KvStore,
        v: &KvStore,
        batch: &PagedBatch,
        p: &PagedParams,
    ) -> Result<Tensor> {
        self.batch(batch)?;
        self.keep(self.cpu.paged_attention(&self.host(q)?, k, v, batch, p))
    }
    fn gather_kv(&self, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
        self.index("gathered KV slots", slots, |_| &[])?;
        self.keep(self.cpu.gather_kv(store, slots))
    }
    fn head_matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self.keep(self.cpu.head_matmul(&self.host(x)?, &self.host(w)?))
    }
    fn slice_cols(
        &self,
        x: &Tensor,
        groups: usize,
        offset: usize,
        len: usize,
        pairs: bool,
    ) -> Result<Tensor> {
        let x = self.host(x)?;
        self.keep(self.cpu.slice_cols(&x, groups, offset, len, pairs))
    }
    fn concat_cols(
        &self,
        a: &Tensor,
        b: &Tensor,
        groups: usize,
        b_groups: usize,
    ) -> Result<Tensor> {
        let (a, b) = (self.host(a)?, self.host(b)?);
        self.keep(self.cpu.concat_cols(&a, &b, groups, b_groups))
    }
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        self.keep(self.cpu.silu_mul(&self.host(gate)?, &self.host(up)?))
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.keep(self.cpu.add(&self.host(a)?, &self.host(b)?))
    }
    fn supports_moe(&self, _format: WeightFormat) -> bool {
        true
    }
    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &MoeExperts<'_>,
        route: &MoeRoute<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        self.keep(self.cpu.moe_experts(&self.host(x)?, experts, route, kinds))
    }
    /// Runs `body` as a recorded step: with its inputs staged, nothing
    /// may cross.
    fn run_step(
        &self,
        inputs: &StepInputs<'_>,
        body: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        {
            let mut s = self.state.lock().unwrap();
            s.steps += 1;
            s.recording = Some(Staged {
                ids: inputs.ids.to_vec(),
                positions: inputs.positions.to_vec(),
                slots: inputs.slots.to_vec(),
                batch: inputs.batch.clone(),
            });
        }
        let t = body();
        self.state.lock().unwrap().recording = None;
        t
    }
}

/// The resident backend as a device (the CPU as its fallback), and its
/// record.
fn resident() -> (Device, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State::default()));
    let b = Resident {
        cpu: CpuBackend::new(),
        state: state.clone(),
    };
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    (Device::new(Arc::new(b), cpu), state)
}

fn cpu() -> Device {
    let b: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    Device::new(b.clone(), b)
}

fn load(name: &str, dev: &Device) -> DecoderModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    let src = open_source(&dir).unwrap();
    load_model(src.as_ref(), dev, &|_, _| {}).unwrap()
}

const BLOCK: usize = 4;

/// A step of sequences `(block table, cached positions, ids, kind)`, in
/// this order, every row's logits.
fn step(seqs: &[(&[u32], usize, &[u32], RowKind)]) -> Step {
    let mut s = Step::default();
    s.batch.block_size = BLOCK;
    for &(table, past, ids, kind) in seqs {
        let q0 = s.ids.len();
        s.batch.seqs.push(SeqSpan {
            q_start: q0,
            q_len: ids.len(),
            kv_len: past + ids.len(),
            table_start: s.batch.block_tables.len(),
        });
        s.batch.block_tables.extend_from_slice(table);
        for (i, &id) in ids.iter().enumerate() {
            let t = past + i;
            s.ids.push(id);
            s.positions.push(t as u32);
            s.slots
                .push((table[t / BLOCK] as usize * BLOCK + t % BLOCK) as u32);
            s.kinds.push(kind);
            s.logits_rows.push(q0 + i);
        }
    }
    s
}

/// Two prompts in one step, then two decode steps of both sequences (in
/// either order).
fn steps() -> Vec<Step> {
    let (a, b): (&[u32], &[u32]) = (&[0, 1, 2], &[5, 4, 3]);
    let (p, g) = (RowKind::Prompt, RowKind::Generated);
    vec![
        step(&[(a, 0, &[11, 7, 42, 3, 19], p), (b, 0, &[5, 60, 2], p)]),
        step(&[(a, 5, &[8], g), (b, 3, &[33], g)]),
        step(&[(b, 4, &[71], g), (a, 6, &[9], g)]),
    ]
}

/// The staged inputs of a decode step, as the decoder gives them.
fn inputs(s: &Step) -> StepInputs<'_> {
    StepInputs {
        key: (1, 1),
        ids: &s.ids,
        positions: &s.positions,
        slots: &s.slots,
        batch: &s.batch,
    }
}

/// Every layer's attention of `name` over [`steps`]: the decode steps
/// recorded on the resident device cross nothing, and every step's output
/// equals the CPU backend's bit for bit.
fn attention_stays_on_device(name: &str) {
    let (dev, state) = resident();
    let (model, reference) = (load(name, &dev), load(name, &cpu()));
    let cpu = cpu();
    let (kw, vw) = model.kv_widths();
    let slots = 8 * BLOCK;
    for l in 0..model.num_layers() {
        let store = |d: &Device, w| d.kv_store(slots, w, KvDType::F16).unwrap();
        let (mut k, mut v) = (store(&dev, kw), store(&dev, vw));
        let (mut rk, mut rv) = (store(&cpu, kw), store(&cpu, vw));
        let (layer, rlayer) = (model.layer(l).unwrap(), reference.layer(l).unwrap());
        for (i, s) in steps().iter().enumerate() {
            let mut body = || {
                let x = layer.attn_norm.forward(&model.embed(&s.ids)?, &dev)?;
                layer
                    .attn
                    .forward(&x, s, model.rope(), &mut k, &mut v, &dev)
            };
            let got = if i == 0 {
                body()
            } else {
                dev.run_step(&inputs(s), &mut body)
            };
            let crossed = std::mem::take(&mut state.lock().unwrap().crossings);
            let got = got.unwrap_or_else(|e| panic!("{name} layer {l} step {i}: {e}"));
            assert!(
                crossed.is_empty(),
                "{name} layer {l} step {i} crossed: {crossed:?}"
            );
            let x = rlayer
                .attn_norm
                .forward(&reference.embed(&s.ids).unwrap(), &cpu)
                .unwrap();
            let want = rlayer
                .attn
                .forward(&x, s, reference.rope(), &mut rk, &mut rv, &cpu)
                .unwrap()
                .to_vec()
                .unwrap();
            let got = got.to_vec().unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} layer {l} step {i}: differs from the CPU backend"
            );
        }
    }
}

/// Multi-head latent attention, absorbed: DeepSeek-V2 (no q_lora),
/// DeepSeek-V3 (YaRN), GLM-4.7-Flash (interleaved RoPE pairs, v wider
/// than q/k).
#[test]
fn mla_decode_attention_makes_no_host_round_trip() {
    for name in ["deepseek-v2", "deepseek-v3-yarn", "glm4-moe-lite"] {
        attention_stays_on_device(name);
    }
}

/// Partial RoPE (GLM-4.5: half and a quarter of each head rotating).
#[test]
fn partial_rope_decode_attention_makes_no_host_round_trip() {
    for name in ["glm4-moe", "glm4-moe-plain"] {
        attention_stays_on_device(name);
    }
}

/// The harness itself: a recorded step that reads a tensor back, or
/// writes keys at slots that are not the step's, is caught.
#[test]
fn a_host_round_trip_is_caught() {
    let (dev, state) = resident();
    let s = &steps()[1];
    let x = dev
        .upload(&Tensor::from_vec(vec![2, 4], vec![1.0; 8]).unwrap())
        .unwrap();
    let mut body = || {
        let h = x.to_vec()?;
        dev.upload(&Tensor::from_vec(vec![2, 4], h)?)
    };
    assert!(dev.run_step(&inputs(s), &mut body).is_err());
    let mut store = dev.kv_store(32, 4, KvDType::F32).unwrap();
    let mut body = || {
        dev.write_kv(&mut store, &[0, 1], &x)?;
        Ok(x.clone())
    };
    assert!(dev.run_step(&inputs(s), &mut body).is_err());
    let crossed = std::mem::take(&mut state.lock().unwrap().crossings);
    assert_eq!(crossed.len(), 2, "{crossed:?}");
}

/// The expanded form (prompt rows) reads the cache back by slots that are
/// no input of the step: a decode step forced into it is not replayable,
/// and the harness says why.
#[test]
fn the_expanded_form_is_not_replayable() {
    let (dev, state) = resident();
    let mut model = load("deepseek-v2", &dev);
    model.set_mla_form(mm_models::MlaForm::Expanded);
    let layer = model.layer(0).unwrap();
    let (kw, vw) = model.kv_widths();
    let (mut k, mut v) = (
        dev.kv_store(8 * BLOCK, kw, KvDType::F16).unwrap(),
        dev.kv_store(8 * BLOCK, vw, KvDType::F16).unwrap(),
    );
    let all = steps();
    let mut attend = |s: &Step| {
        let x = model.embed(&s.ids)?;
        layer
            .attn
            .forward(&x, s, model.rope(), &mut k, &mut v, &dev)
    };
    attend(&all[0]).unwrap();
    let s = &all[1];
    let e = dev
        .run_step(&inputs(s), &mut || attend(s))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gathered KV slots not staged"), "{e}");
    assert!(!state.lock().unwrap().crossings.is_empty());
}

/// A whole dense model's decode steps go through `run_step` (the decoder
/// finds them replayable) and cross nothing; a prompt step does not.
#[test]
fn dense_decode_steps_are_recorded_without_round_trips() {
    let (dev, state) = resident();
    let model = load("llama", &dev);
    let reference = load("llama", &cpu());
    let mut kv = model.new_paged(8, BLOCK, KvDType::F16).unwrap();
    let mut rkv = reference.new_paged(8, BLOCK, KvDType::F16).unwrap();
    for (i, s) in steps().iter().enumerate() {
        let got = model.forward_step(s, &mut kv).unwrap().to_vec().unwrap();
        let st = std::mem::take(&mut *state.lock().unwrap());
        assert!(st.crossings.is_empty(), "step {i}: {:?}", st.crossings);
        assert_eq!(st.steps, (i > 0) as usize, "step {i} recorded");
        let want = reference
            .forward_step(s, &mut rkv)
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
