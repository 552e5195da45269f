//! Decode steps as CUDA graphs: a step's ~10 launches per layer cost more
//! host time than the GPU needs to run them at small batch sizes, so the
//! step is captured once and replayed with one launch.
//!
//! Strategy (`Backend::run_step`): steps are keyed by what they read
//! besides their inputs (model and KV cache ids) and their row count. The
//! first step of a key runs as is (it loads the kernels and sizes the
//! output). The second is captured: its inputs (token ids, positions, KV
//! slots, block tables and the attention's per-row metadata) are first
//! staged into buffers the key owns, so every op finds them in the upload
//! cache and nothing crosses the bus inside the graph; the logits are
//! copied into a buffer the key owns and the graph is launched. Later
//! steps stage their inputs into the same buffers and launch the graph.
//! Host time per step: the staging copies, one graph launch and one copy
//! of the logits.
//!
//! A step that cannot be captured (an op falls back to the CPU, or
//! anything else crosses the bus) runs as is, and so do later steps of
//! its key; inputs that outgrow their buffers (block tables of longer
//! sequences) are staged into larger ones and the step is captured again.

use std::borrow::Cow;
use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};
use mm_core::{Error, Result, StepInputs, Storage, Tensor};

use crate::buffer::{alloc, tensor, CudaBuffer};
use crate::ops::attention::row_meta;
use crate::runtime::{driver_err, Cached, Runtime};
use std::sync::Arc;

/// Recorded steps kept at most (least recently used dropped first).
const MAX_GRAPHS: usize = 64;

/// Graph key: (model id, KV cache id) and rows.
type Key = ((u64, u64), usize);

enum State {
    /// Ran once as is; the logits' shape.
    Warm(Vec<usize>),
    /// Captured.
    Ready(Graph),
    /// Capture failed (the reason was logged): runs as is.
    Failed,
}

/// A captured step: the graph, its staged inputs, its output and the
/// cached uploads it reads.
struct Graph {
    graph: CudaGraph,
    /// Staged inputs, in the order of [`staged`].
    inputs: Vec<Arc<CudaSlice<u32>>>,
    out: CudaSlice<f32>,
    shape: Vec<usize>,
    _keep: Vec<Cached>,
}

struct Entry {
    state: State,
    used: u64,
}

/// The recorded steps of one GPU.
#[derive(Default)]
pub struct Graphs {
    entries: HashMap<Key, Entry>,
    clock: u64,
}

// SAFETY: a CudaGraph is only launched or dropped under the backend's
// mutex around `Graphs`, on the runtime's one stream.
unsafe impl Send for Graphs {}

/// The values staged for a step, by upload-cache key (the same keys and
/// values the ops compute from the step's arguments).
type Staged<'a> = [(&'static str, Cow<'a, [u32]>); 7];

fn staged<'a>(inp: &StepInputs<'a>) -> Staged<'a> {
    let (qpos, table0, single) = row_meta(inp.batch);
    [
        ("token ids", Cow::Borrowed(inp.ids)),
        ("rope positions", Cow::Borrowed(inp.positions)),
        ("KV slots", Cow::Borrowed(inp.slots)),
        ("block tables", Cow::Borrowed(&inp.batch.block_tables[..])),
        ("query positions", Cow::Owned(qpos)),
        ("block-table starts", Cow::Owned(table0)),
        ("decode rows", Cow::Owned(single)),
    ]
}

impl Graphs {
    /// See the module docs.
    pub fn run(
        &mut self,
        rt: &Runtime,
        inp: &StepInputs<'_>,
        body: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let key = (inp.key, inp.ids.len());
        self.clock += 1;
        let now = self.clock;
        let Some(entry) = self.entries.get_mut(&key) else {
            let t = body()?;
            self.evict();
            self.entries.insert(
                key,
                Entry {
                    state: State::Warm(t.shape().to_vec()),
                    used: now,
                },
            );
            return Ok(t);
        };
        entry.used = now;
        let values = staged(inp);
        // Failed unless it is replayed or captured below.
        let shape = match std::mem::replace(&mut entry.state, State::Failed) {
            State::Ready(g) if fits(&g, &values) => {
                let t = values
                    .iter()
                    .zip(&g.inputs)
                    .try_for_each(|((k, v), buf)| rt.stage(k, v, buf))
                    .and_then(|_| launch(rt, &g));
                entry.state = State::Ready(g);
                return t;
            }
            // Inputs outgrew their buffers: captured again with more room.
            State::Ready(g) => g.shape,
            State::Warm(s) => s,
            State::Failed => return body(),
        };
        match capture(rt, &values, &shape, body) {
            Ok(g) => {
                let t = launch(rt, &g);
                entry.state = State::Ready(g);
                t
            }
            Err(e) => {
                tracing::warn!(
                    "decode steps of {} rows run without a CUDA graph: {e}",
                    key.1
                );
                body()
            }
        }
    }

    fn evict(&mut self) {
        while self.entries.len() >= MAX_GRAPHS {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
    }
}

/// Whether every staged value fits the graph's input buffers.
fn fits(g: &Graph, values: &Staged<'_>) -> bool {
    values
        .iter()
        .zip(&g.inputs)
        .all(|((_, v), b)| v.len() <= b.len())
}

/// Stages the inputs into new buffers (twice the room, for growing block
/// tables) and captures `body`.
fn capture(
    rt: &Runtime,
    values: &Staged<'_>,
    shape: &[usize],
    body: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<Graph> {
    let mut inputs = Vec::with_capacity(values.len());
    for (k, v) in values {
        let room = (2 * v.len()).max(16);
        // SAFETY: staged values are written before any kernel reads them,
        // and kernels read only the staged prefix.
        let buf = Arc::new(
            unsafe { rt.stream.alloc::<u32>(room) }
                .map_err(|e| crate::buffer::oom(rt, 4 * room, k, e))?,
        );
        rt.stage(k, v, &buf)?;
        inputs.push(buf);
    }
    let n: usize = shape.iter().product();
    let mut out = alloc(rt, n.max(1), "a decode step's logits")?;
    rt.set_capturing(true);
    let begun = rt
        .stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| driver_err("starting a graph capture", e));
    let ran = begun.and_then(|_| {
        let t = body()?;
        if t.shape() != shape {
            return Err(Error::Other(format!(
                "the step's logits are {:?}, its first run's {shape:?}",
                t.shape()
            )));
        }
        let Storage::Device(b) = t.storage() else {
            return Err(Error::Other("the step's logits are not on the GPU".into()));
        };
        let src = b
            .as_any()
            .downcast_ref::<CudaBuffer>()
            .ok_or_else(|| Error::Other("the step's logits are not this GPU's".into()))?;
        rt.stream
            .memcpy_dtod(&src.data, &mut out)
            .map_err(|e| driver_err("copying the logits", e))
    });
    // Buffers allocated in the capture must be freed in it too.
    rt.drop_quantized_x();
    let graph = rt
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(|e| driver_err("ending a graph capture", e));
    let keep = rt.set_capturing(false);
    // Frees refused inside a failed capture leave their error behind.
    let _ = rt.ctx.check_err();
    ran?;
    let graph = graph?.ok_or_else(|| Error::Other("the capture recorded nothing".into()))?;
    Ok(Graph {
        graph,
        inputs,
        out,
        shape: shape.to_vec(),
        _keep: keep,
    })
}

/// Launches a captured step; returns a copy of its logits (the next
/// launch overwrites the graph's own output).
fn launch(rt: &Runtime, g: &Graph) -> Result<Tensor> {
    g.graph
        .launch()
        .map_err(|e| driver_err("launching a decode step's graph", e))?;
    let n: usize = g.shape.iter().product();
    let mut y = alloc(rt, n.max(1), "logits")?;
    rt.stream
        .memcpy_dtod(&g.out.slice(0..n), &mut y.slice_mut(0..n))
        .map_err(|e| driver_err("copying the logits", e))?;
    tensor(rt, g.shape.clone(), y)
}
