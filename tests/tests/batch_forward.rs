//! The batched forward pass (`graft_cpu::forward_batch`, what `graft serve` runs) against the
//! single-sequence one (`graft generate`'s): sequences of different lengths, each with its own
//! adapter (none, LoRA, rsLoRA, DoRA, IA3, AdaLoRA), prefilling and decoding in
//! one pass, give each sequence the logits it gets alone, bit for bit, on dense and quantized
//! bases.

use graft_models::{KvCache, LoadAdapterOptions, Model, OpenOptions};
use graft_quant::QType;
use graft_tests::fixtures;

/// (adapter name, case whose `adapters/<dir>` holds it)
const ADAPTERS: &[(&str, &str, &str)] = &[
    ("lora", "lora_qv", "default"),
    ("rslora", "all_linear_rslora_patterns", "default"),
    ("dora", "dora", "default"),
    ("ia3", "ia3", "default"),
    ("adalora", "adalora", "default"),
    ("a", "multi_adapter", "a"),
    ("b", "multi_adapter", "b"),
];

fn model(quantize: Option<QType>) -> Model {
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
        // the reference runs each adapter with all loaded: none may touch the base
        assert!(!graft_cpu::replaces_parameters(
            m.registry().get(name).unwrap()
        ));
    }
    m
}

/// `graft generate`'s logits for one sequence: the registry with `adapter` active.
fn alone(m: &mut Model, adapter: Option<&str>, steps: &[Vec<u32>]) -> Vec<Vec<f32>> {
    match adapter {
        Some(a) => {
            m.enable_adapters().unwrap();
            m.set_adapter(&[a]).unwrap();
        }
        None => m.disable_adapters().unwrap(),
    }
    let mut cache = KvCache::new();
    steps
        .iter()
        .map(|ids| {
            let l = m.forward_last(ids, &mut cache).unwrap();
            l.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 11 + 3) % 128)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    graft_models::sampling::argmax(v)
}

/// Sequences join at different steps: `(adapter, prompt length, first step)`.
fn check(quantize: Option<QType>) {
    let mut m = model(quantize);
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
        // long prompts joining together (one GEMM for both) and short ones (one row kernel)
        (Some("b"), 24, 0),
        (Some("ia3"), 31, 2),
        (None, 18, 2),
        (Some("dora"), 6, 2),
    ];
    const STEPS: usize = 5;
    // Batched: every step runs the sequences that have joined, in one pass.
    let mut caches: Vec<KvCache> = plan.iter().map(|_| KvCache::new()).collect();
    let mut inputs: Vec<Vec<Vec<u32>>> = vec![Vec::new(); plan.len()];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); plan.len()];
    let mut next: Vec<Vec<u32>> = plan
        .iter()
        .enumerate()
        .map(|(k, p)| prompt(p.1, k as u32))
        .collect();
    for step in 0..STEPS {
        let live: Vec<usize> = (0..plan.len()).filter(|&k| plan[k].2 <= step).collect();
        let reg = m.registry();
        let adapters: Vec<_> = live
            .iter()
            .map(|&k| plan[k].0.map(|a| reg.get(a).unwrap()))
            .collect();
        let mut cache_refs: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
        let mut seqs: Vec<graft_cpu::Sequence> = live
            .iter()
            .zip(&adapters)
            .map(|(&k, &adapter)| graft_cpu::Sequence {
                ids: &next[k],
                cache: cache_refs[k].take().unwrap(),
                adapter,
            })
            .collect();
        let logits = graft_cpu::forward_batch(m.network(), m.table(), &mut seqs).unwrap();
        assert_eq!(logits.dims2().unwrap().0, live.len());
        let mut new_next = next.clone();
        for (i, &k) in live.iter().enumerate() {
            let row = logits.get(i).unwrap().to_vec1::<f32>().unwrap();
            inputs[k].push(next[k].clone());
            new_next[k] = vec![argmax(&row)];
            got[k].push(row);
        }
        next = new_next;
    }
    for (k, p) in plan.iter().enumerate() {
        let want = alone(&mut m, p.0, &inputs[k]);
        assert_eq!(want.len(), got[k].len());
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
fn batched_equals_alone_dense() {
    check(None);
}

#[test]
fn batched_equals_alone_q4_0() {
    check(Some(QType::Q4_0));
}

#[test]
fn batched_equals_alone_q8_0() {
    check(Some(QType::Q8_0));
}

/// An adapter that replaces base parameters (`modules_to_save`) shares a pass only with its
/// own sequences; mixing it with another is refused, not approximated.
#[test]
fn parameter_replacing_adapter_runs_alone() {
    let mut m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let dir = fixtures().join("cases/modules_to_save_lm_head/adapters/default");
    m.load_adapter(
        &dir,
        LoadAdapterOptions {
            adapter_name: Some("saved".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = m.registry().get("saved").unwrap();
    assert!(graft_cpu::replaces_parameters(a));
    let (p1, p2) = (prompt(6, 1), prompt(4, 2));
    let (mut c1, mut c2) = (KvCache::new(), KvCache::new());
    let mut seqs = vec![
        graft_cpu::Sequence {
            ids: &p1,
            cache: &mut c1,
            adapter: Some(a),
        },
        graft_cpu::Sequence {
            ids: &p2,
            cache: &mut c2,
            adapter: None,
        },
    ];
    let e = graft_cpu::forward_batch(m.network(), m.table(), &mut seqs).unwrap_err();
    assert!(e.to_string().contains("saved"), "{e}");
    // two sequences of that adapter together: each as alone
    let (mut c1, mut c2) = (KvCache::new(), KvCache::new());
    let mut seqs = vec![
        graft_cpu::Sequence {
            ids: &p1,
            cache: &mut c1,
            adapter: Some(a),
        },
        graft_cpu::Sequence {
            ids: &p2,
            cache: &mut c2,
            adapter: Some(a),
        },
    ];
    let l = graft_cpu::forward_batch(m.network(), m.table(), &mut seqs).unwrap();
    let w1 = alone(&mut m, Some("saved"), std::slice::from_ref(&p1));
    let w2 = alone(&mut m, Some("saved"), std::slice::from_ref(&p2));
    assert_eq!(l.get(0).unwrap().to_vec1::<f32>().unwrap(), w1[0]);
    assert_eq!(l.get(1).unwrap().to_vec1::<f32>().unwrap(), w2[0]);
}
