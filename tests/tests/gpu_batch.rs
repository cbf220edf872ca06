//! The GPU's batched pass (what `graft serve --device gpu` runs) against its one-sequence pass
//! (`graft generate --device gpu`'s): sequences of different lengths, each in its own KV-cache
//! slot with its own adapter (none, LoRA, rsLoRA, DoRA, IA3, AdaLoRA) in a slot of its own,
//! prefilling and decoding in one pass, give each sequence the logits it gets alone, bit for
//! bit; adapters the shared batch cannot hold are refused by name.

use graft_gpu::{BatchOptions, BatchSeq};
use graft_models::{Device, DeviceOptions, LoadAdapterOptions, Model, OpenOptions};
use graft_quant::QType;
use graft_tests::{fixtures, test_gpu};

const ADAPTERS: &[(&str, &str, &str)] = &[
    ("lora", "lora_qv", "default"),
    ("rslora", "all_linear_rslora_patterns", "default"),
    ("dora", "dora", "default"),
    ("ia3", "ia3", "default"),
    ("adalora", "adalora", "default"),
    ("a", "multi_adapter", "a"),
    ("b", "multi_adapter", "b"),
];

fn model(quantize: Option<QType>, gpu: graft_gpu::Gpu) -> Model {
    let opts = OpenOptions { quantize };
    let mut m = Model::open_base_with(&fixtures().join("models/llama"), &opts).unwrap();
    for (name, case, dir) in ADAPTERS {
        let path = fixtures()
            .join("cases")
            .join(case)
            .join("adapters")
            .join(dir);
        m.load_adapter(
            &path,
            LoadAdapterOptions {
                adapter_name: Some(name.to_string()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let dopts = DeviceOptions {
        max_context: Some(128),
        open_gpu: Some(gpu),
        ..Default::default()
    };
    m.set_device(Device::Gpu, &dopts).unwrap();
    m
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 11 + 3) % 128)
        .collect()
}

fn check(quantize: Option<QType>) {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let mut m = model(quantize, gpu);
    let plan: &[(Option<&str>, usize, usize)] = &[
        (None, 5, 0),
        (Some("lora"), 1, 0),
        (Some("dora"), 12, 0),
        (Some("ia3"), 3, 0),
        (Some("adalora"), 20, 1),
        (Some("b"), 2, 1),
        (Some("rslora"), 7, 2),
        (Some("a"), 17, 0),
        (Some("lora"), 9, 2),
        (Some("b"), 24, 0),
        (Some("ia3"), 12, 2),
        (None, 9, 2),
        (Some("dora"), 6, 2),
    ];
    const STEPS: usize = 5;
    let names: Vec<&str> = ADAPTERS.iter().map(|a| a.0).collect();
    m.disable_adapters().unwrap();
    let pipelines_before = m
        .with_gpu(|g, table, reg| {
            g.enable_batch(BatchOptions {
                sequences: plan.len(),
                adapters: names.len(),
                max_rank: 16,
            })
            .unwrap();
            // adapters enter their slots in reverse order, after a first pass compiled the
            // kernels: loading compiles nothing
            let ids = prompt(3, 9);
            g.forward_batch(
                table,
                reg,
                &[BatchSeq {
                    ids: &ids,
                    slot: 0,
                    pos: 0,
                    adapter: None,
                }],
            )
            .unwrap();
            let before = g.pipelines_compiled();
            for (slot, name) in names.iter().enumerate().rev() {
                g.upload_adapter(table, slot, reg.get(name).unwrap())
                    .unwrap();
            }
            before
        })
        .unwrap();
    let slot_of = |a: &str| names.iter().position(|n| *n == a).unwrap();
    let mut pos = vec![0usize; plan.len()];
    let mut inputs: Vec<Vec<Vec<u32>>> = vec![Vec::new(); plan.len()];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); plan.len()];
    let mut next: Vec<Vec<u32>> = plan
        .iter()
        .enumerate()
        .map(|(k, p)| prompt(p.1, k as u32))
        .collect();
    for step in 0..STEPS {
        let live: Vec<usize> = (0..plan.len()).filter(|&k| plan[k].2 <= step).collect();
        let seqs: Vec<BatchSeq> = live
            .iter()
            .map(|&k| BatchSeq {
                ids: &next[k],
                slot: k,
                pos: pos[k],
                adapter: plan[k].0.map(slot_of),
            })
            .collect();
        let logits = m
            .with_gpu(|g, table, reg| g.forward_batch(table, reg, &seqs).unwrap())
            .unwrap();
        assert_eq!(logits.dims2().unwrap().0, live.len());
        let mut new_next = next.clone();
        for (i, &k) in live.iter().enumerate() {
            let row = logits.get(i).unwrap().to_vec1::<f32>().unwrap();
            inputs[k].push(next[k].clone());
            pos[k] += next[k].len();
            new_next[k] = vec![graft_models::sampling::argmax(&row)];
            got[k].push(row);
        }
        next = new_next;
    }
    let pipelines_after = m.with_gpu(|g, _, _| g.pipelines_compiled()).unwrap();
    // passes of other shapes may add a kernel variant (a tiling the first pass did not use),
    // never one per adapter
    assert!(
        pipelines_after <= pipelines_before + 2,
        "{pipelines_after} vs {pipelines_before}"
    );
    for (k, p) in plan.iter().enumerate() {
        match p.0 {
            Some(a) => {
                m.enable_adapters().unwrap();
                m.set_adapter(&[a]).unwrap();
            }
            None => m.disable_adapters().unwrap(),
        }
        let want: Vec<Vec<f32>> = m
            .with_gpu(|g, table, reg| {
                g.reset();
                inputs[k]
                    .iter()
                    .map(|ids| {
                        let l = g.forward(table, reg, ids, true).unwrap();
                        l.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    })
                    .collect()
            })
            .unwrap();
        for (s, (w, g)) in want.iter().zip(&got[k]).enumerate() {
            let same = w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
            let worst = w
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                same,
                "{quantize:?}: sequence {k} ({:?}, prompt {}) step {s}: batched logits differ from alone (max |diff| {worst:e})",
                p.0, p.1
            );
        }
    }
}

#[test]
fn gpu_batched_equals_alone_dense() {
    check(None);
}

#[test]
fn gpu_batched_equals_alone_q4_0() {
    check(Some(QType::Q4_0));
}

/// What a shared batch cannot hold is refused by name: an adapter that replaces base
/// parameters, one above the slots' rank, a slot or cache position out of range, a model
/// whose registry has an adapter active.
#[test]
fn gpu_batch_refuses_what_it_cannot_hold() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let mut m = model(None, gpu);
    let dir = fixtures().join("cases/modules_to_save_lm_head/adapters/default");
    m.load_adapter(
        &dir,
        LoadAdapterOptions {
            adapter_name: Some("saved".into()),
            ..Default::default()
        },
    )
    .unwrap();
    m.disable_adapters().unwrap();
    m.with_gpu(|g, table, reg| {
        g.enable_batch(BatchOptions {
            sequences: 2,
            adapters: 2,
            max_rank: 2,
        })
        .unwrap();
        let e = g
            .upload_adapter(table, 0, reg.get("saved").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("saved"), "{e}");
        let e = g
            .upload_adapter(table, 0, reg.get("lora").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("rank"), "{e}");
        let e = g
            .upload_adapter(table, 5, reg.get("ia3").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("slot"), "{e}");
        let ids = prompt(4, 1);
        let one = |slot, pos, adapter| BatchSeq {
            ids: &ids,
            slot,
            pos,
            adapter,
        };
        for (seqs, what) in [
            (vec![one(2, 0, None)], "slot"),
            (vec![one(0, 0, Some(7))], "slot"),
            (vec![one(0, 62, None)], "positions"),
            (vec![one(1, 0, None), one(1, 0, None)], "twice"),
            (vec![], "no sequences"),
        ] {
            let e = g.forward_batch(table, reg, &seqs).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    });
    m.enable_adapters().unwrap();
    m.set_adapter(&["lora"]).unwrap();
    m.with_gpu(|g, table, reg| {
        let ids = prompt(2, 1);
        let e = g
            .forward_batch(
                table,
                reg,
                &[BatchSeq {
                    ids: &ids,
                    slot: 0,
                    pos: 0,
                    adapter: None,
                }],
            )
            .unwrap_err();
        assert!(e.to_string().contains("registry"), "{e}");
    });
}
