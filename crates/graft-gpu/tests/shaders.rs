//! Every kernel variant validated by naga with the capabilities graft requests, every uniform
//! struct's layout equal to its Rust twin's, every binding's use equal to the layout the host
//! builds, and the flag constants the host mirrors equal to the shaders'.

use graft_gpu::kernels::{host_constants, twin_layout, Bind, Kernel};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(k: Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = k.source();
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{k:?} does not parse:\n{}", e.emit_to_string(&src)));
    let caps = Capabilities::from_bits_truncate(graft_gpu::device::naga_capabilities() as _);
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{k:?} does not validate:\n{}", e.emit_to_string(&src)));
    (module, info)
}

#[test]
fn every_kernel_validates() {
    for k in Kernel::all() {
        parse(k);
    }
}

#[test]
fn uniform_structs_match_their_rust_twins() {
    for k in Kernel::all() {
        let (module, _) = parse(k);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let uniform = module
            .global_variables
            .iter()
            .find(|(_, v)| v.space == naga::AddressSpace::Uniform)
            .unwrap_or_else(|| panic!("{k:?} has no uniform"));
        let ty = &module.types[uniform.1.ty];
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{k:?}: uniform is not a struct");
        };
        let (fields, size) = twin_layout(k.params_name()).unwrap();
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap(), m.offset as usize))
            .collect();
        let rust: Vec<(String, usize)> = fields.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(wgsl, rust, "{k:?}: member offsets differ");
        assert_eq!(*span as usize, size, "{k:?}: struct size differs");
    }
}

#[test]
fn bindings_match_the_host_layouts() {
    for k in Kernel::all() {
        let (module, _) = parse(k);
        let mut seen: Vec<(u32, Bind)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| {
                let b = v.binding.as_ref()?;
                assert_eq!(b.group, 0, "{k:?}");
                let kind = match v.space {
                    naga::AddressSpace::Uniform => Bind::Uniform,
                    naga::AddressSpace::Storage { access } => {
                        if access.contains(naga::StorageAccess::STORE) {
                            Bind::ReadWrite
                        } else {
                            Bind::Read
                        }
                    }
                    other => panic!("{k:?}: unexpected space {other:?}"),
                };
                Some((b.binding, kind))
            })
            .collect();
        seen.sort_by_key(|s| s.0);
        let want: Vec<(u32, Bind)> = k
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, *b))
            .collect();
        assert_eq!(seen, want, "{k:?}");
        let storage = want.iter().filter(|b| b.1 != Bind::Uniform).count();
        assert!(
            storage <= 8,
            "{k:?} uses {storage} storage buffers; WebGPU guarantees 8"
        );
    }
}

#[test]
fn flag_constants_match_the_host() {
    let mut found = 0;
    for (name, value) in host_constants() {
        for k in Kernel::all() {
            let (module, _) = parse(k);
            for (_, c) in module.constants.iter() {
                if c.name.as_deref() == Some(name) {
                    let got = match module.global_expressions[c.init] {
                        naga::Expression::Literal(naga::Literal::U32(v)) => v,
                        ref e => panic!("{name}: {e:?}"),
                    };
                    assert_eq!(got, value, "{name} in {k:?}");
                    found += 1;
                }
            }
        }
    }
    assert!(
        found >= host_constants().len(),
        "some host constants are not in any shader"
    );
}

/// The workgroup memory of every kernel fits WebGPU's default 16 KiB.
#[test]
fn workgroup_memory_fits_webgpu_defaults() {
    for k in Kernel::all() {
        let (module, _) = parse(k);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size)
            .sum();
        assert!(
            bytes <= 16384,
            "{k:?} uses {bytes} bytes of workgroup memory"
        );
    }
}
