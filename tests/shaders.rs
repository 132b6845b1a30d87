//! Every `shaders/*.wgsl` parses, validates and translates to SPIR-V, MSL, HLSL and GLSL.
//!
//! Some files are fragments used only concatenated with another (a cell file followed by the
//! shared step code of recurrent.wgsl). Files that do not validate alone are concatenated pairwise,
//! and a fragment that fits no pair is appended to each pair; every pair or triple that validates
//! is translated, and a fragment that fits none fails the test.
//! `override` constants are resolved to their WGSL defaults first, so every override needs one.
//! A backend whose capabilities the shader exceeds (e.g. f64 on Metal) is skipped with a note;
//! any other failure names the file, entry point and backend.

use std::path::{Path, PathBuf};

use naga::back;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};

/// The shader files, found at test time so that files added later are covered.
fn shader_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    files.sort();
    files
}

fn validate(module: &Module, caps: Capabilities) -> Result<ModuleInfo, String> {
    Validator::new(ValidationFlags::all(), caps)
        .validate(module)
        .map_err(|e| format!("{e:?}"))
}

/// The module with every override replaced by its default, for one entry point or all.
fn resolve_overrides(
    module: &Module,
    info: &ModuleInfo,
    entry: Option<&str>,
) -> Result<(Module, ModuleInfo), String> {
    let constants = back::PipelineConstants::default();
    let entry = entry.map(|name| (ShaderStage::Compute, name));
    back::pipeline_constants::process_overrides(module, info, entry, &constants)
        .map(|(m, i)| (m.into_owned(), i.into_owned()))
        .map_err(|e| format!("resolving overrides: {e}"))
}

fn to_spirv(module: &Module, info: &ModuleInfo) -> Result<(), String> {
    let options = back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let words = back::spv::write_vec(module, info, &options, None).map_err(|e| e.to_string())?;
    assert!(!words.is_empty());
    Ok(())
}

fn to_msl(module: &Module, info: &ModuleInfo) -> Result<(), String> {
    let options = back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipeline = back::msl::PipelineOptions::default();
    let (text, _) =
        back::msl::write_string(module, info, &options, &pipeline).map_err(|e| e.to_string())?;
    assert!(!text.is_empty());
    Ok(())
}

fn to_hlsl(module: &Module, info: &ModuleInfo) -> Result<(), String> {
    let options = back::hlsl::Options {
        shader_model: back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let pipeline = back::hlsl::PipelineOptions::default();
    let mut text = String::new();
    back::hlsl::Writer::new(&mut text, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| e.to_string())?;
    assert!(!text.is_empty());
    Ok(())
}

fn to_glsl(module: &Module, info: &ModuleInfo, entry: &str) -> Result<(), String> {
    let options = back::glsl::Options {
        version: back::glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
        ..Default::default()
    };
    let pipeline = back::glsl::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
        multiview: None,
    };
    let mut text = String::new();
    back::glsl::Writer::new(
        &mut text,
        module,
        info,
        &options,
        &pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut writer| writer.write())
    .map_err(|e| e.to_string())?;
    assert!(!text.is_empty());
    Ok(())
}

type WholeModuleBackend = fn(&Module, &ModuleInfo) -> Result<(), String>;

/// A shader file's name and text.
struct Shader {
    name: String,
    source: String,
}

fn read_shader(path: &Path) -> Shader {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    Shader { name, source }
}

/// Parses and validates WGSL with every capability; the error is rendered against the source.
fn parse_and_validate(source: &str) -> Result<(Module, ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("parse: {}", e.emit_to_string(source)))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("validation: {}", e.emit_to_string(source)))?;
    Ok((module, info))
}

/// The translation units: each file that validates alone, and each pair of files that
/// do not but validate concatenated. Fragments that fit no pair are returned as failures.
fn translation_units(shaders: &[Shader]) -> (Vec<Shader>, Vec<String>) {
    let mut units = Vec::new();
    let mut fragments = Vec::new();
    for shader in shaders {
        match parse_and_validate(&shader.source) {
            Ok(_) => units.push(Shader {
                name: shader.name.clone(),
                source: shader.source.clone(),
            }),
            Err(e) => fragments.push((shader, e)),
        }
    }
    let mut used = vec![false; fragments.len()];
    for (i, (first, _)) in fragments.iter().enumerate() {
        for (j, (second, _)) in fragments.iter().enumerate().skip(i + 1) {
            // WGSL declarations are order-independent, but try both orders to be safe.
            let pair = [(first, second), (second, first)]
                .into_iter()
                .find_map(|(a, b)| {
                    let source = format!("{}{}", a.source, b.source);
                    parse_and_validate(&source).is_ok().then(|| Shader {
                        name: format!("{} + {}", a.name, b.name),
                        source,
                    })
                });
            if let Some(unit) = pair {
                used[i] = true;
                used[j] = true;
                units.push(unit);
            }
        }
    }
    // A fragment that extends a pair (recurrent_subgroup.wgsl after a cell file and
    // recurrent.wgsl) makes a unit of three.
    let pair_units: Vec<(String, String)> = units
        .iter()
        .filter(|unit| unit.name.contains(" + "))
        .map(|unit| (unit.name.clone(), unit.source.clone()))
        .collect();
    for (i, (fragment, _)) in fragments.iter().enumerate() {
        if used[i] {
            continue;
        }
        for (name, source) in &pair_units {
            let source = format!("{source}{}", fragment.source);
            if parse_and_validate(&source).is_ok() {
                used[i] = true;
                units.push(Shader {
                    name: format!("{name} + {}", fragment.name),
                    source,
                });
            }
        }
    }
    let failures = fragments
        .iter()
        .zip(used)
        .filter(|(_, used)| !used)
        .map(|((shader, error), _)| {
            format!("{} (alone, and with no other file): {error}", shader.name)
        })
        .collect();
    (units, failures)
}

/// Translates one unit; returns the failures, each naming file, entry point and backend.
fn translate(shader: &Shader) -> Vec<String> {
    let name = &shader.name;
    let (module, info) = match parse_and_validate(&shader.source) {
        Ok(parsed) => parsed,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let entries: Vec<String> = module
        .entry_points
        .iter()
        .filter(|ep| ep.stage == ShaderStage::Compute)
        .map(|ep| ep.name.clone())
        .collect();
    if entries.is_empty() {
        return vec![format!("{name}: no compute entry point")];
    }
    let (resolved, resolved_info) = match resolve_overrides(&module, &info, None) {
        Ok(r) => r,
        Err(e) => return vec![format!("{name} (all entry points): {e}")],
    };

    let mut failures = Vec::new();
    let whole_module: [(&str, Capabilities, WholeModuleBackend); 3] = [
        ("SPIR-V", back::spv::supported_capabilities(), to_spirv),
        ("MSL", back::msl::supported_capabilities(), to_msl),
        ("HLSL", back::hlsl::supported_capabilities(), to_hlsl),
    ];
    for (backend, caps, translate) in whole_module {
        if let Err(e) = validate(&module, caps) {
            println!("{name}: {backend} skipped, needs capabilities it lacks: {e}");
            continue;
        }
        if let Err(e) = translate(&resolved, &resolved_info) {
            failures.push(format!(
                "{name} (entry points {entries:?}) -> {backend}: {e}"
            ));
        }
    }
    if let Err(e) = validate(&module, back::glsl::supported_capabilities()) {
        println!("{name}: GLSL skipped, needs capabilities it lacks: {e}");
        return failures;
    }
    for entry in &entries {
        let result = resolve_overrides(&module, &info, Some(entry))
            .and_then(|(m, i)| to_glsl(&m, &i, entry));
        if let Err(e) = result {
            failures.push(format!("{name} entry `{entry}` -> GLSL: {e}"));
        }
    }
    failures
}

#[test]
fn every_shader_translates_to_spirv_msl_hlsl_and_glsl() {
    let files = shader_files();
    assert!(!files.is_empty(), "no shaders/*.wgsl found");
    let shaders: Vec<Shader> = files.iter().map(|path| read_shader(path)).collect();
    let (units, mut failures) = translation_units(&shaders);
    for unit in &units {
        let unit_failures = translate(unit);
        let verdict = if unit_failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        println!("{}: {verdict}", unit.name);
        failures.extend(unit_failures);
    }
    assert!(
        failures.is_empty(),
        "{} translation failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn override_without_default_is_reported_with_its_name() {
    // Valid WGSL, but an override without a default cannot be resolved for translation.
    let shader = Shader {
        name: "broken.wgsl".into(),
        source: "override N: u32;\n\
                 @group(0) @binding(0) var<storage, read_write> out: array<f32>; // (N,)\n\
                 @compute @workgroup_size(1) fn main() { out[0] = f32(N); }\n"
            .into(),
    };
    let failures = translate(&shader);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("broken.wgsl"), "{failures:?}");
}

#[test]
fn fragment_that_fits_no_other_file_is_reported() {
    let shaders = [
        Shader {
            name: "cell.wgsl".into(),
            source: "fn gates() -> u32 { return 2u * WIDTH; }\n".into(),
        },
        Shader {
            name: "step.wgsl".into(),
            source: "const WIDTH: u32 = 1u;\n\
                     @group(0) @binding(0) var<storage, read_write> out: array<f32>; // (1,)\n\
                     @compute @workgroup_size(1) fn main() { out[0] = f32(gates()); }\n"
                .into(),
        },
        Shader {
            name: "orphan.wgsl".into(),
            source: "fn f() -> f32 { return UNDEFINED; }\n".into(),
        },
    ];
    let (units, failures) = translation_units(&shaders);
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert!(names.contains(&"cell.wgsl + step.wgsl"), "{names:?}");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("orphan.wgsl"), "{failures:?}");
}

/// Source a parameter struct's file parses in: recurrent.wgsl needs a cell file before it, and
/// the files that reduce over a workgroup need workgroup_reduce.wgsl after them.
fn parsable_source(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
    };
    match file {
        "recurrent.wgsl" => read("lstm.wgsl") + &read(file),
        "clip.wgsl" | "cross_entropy.wgsl" => read(file) + &read("workgroup_reduce.wgsl"),
        _ => read(file),
    }
}

#[test]
fn every_parameter_struct_matches_its_wgsl_twin_in_size_and_member_offsets() {
    let layouts = wgpu_rnn::gpu::params::layouts();
    assert!(!layouts.is_empty());
    for (name, file, size, fields) in layouts {
        let module = naga::front::wgsl::parse_str(&parsable_source(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, ty)| ty.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("struct {name} not found in {file}"));
        let naga::TypeInner::Struct { members, .. } = &ty.inner else {
            panic!("{name} in {file} is not a struct");
        };
        let wgsl: Vec<(&str, usize)> = members
            .iter()
            .map(|m| (m.name.as_deref().unwrap_or("?"), m.offset as usize))
            .collect();
        assert_eq!(wgsl, fields, "{name} ({file}): members and offsets");
        assert_eq!(
            layouter[handle].size as usize, size,
            "{name} ({file}): size"
        );
    }
}

/// The value of the WGSL constant `name` of `module` (a u32 or bool literal) as a usize.
fn constant(module: &Module, name: &str) -> usize {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("constant {name} not found"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v as usize,
        naga::Expression::Literal(naga::Literal::Bool(v)) => usize::from(v),
        ref other => panic!("{name} is not a u32 or bool literal: {other:?}"),
    }
}

#[test]
fn cell_constants_of_the_shaders_are_the_cells_facts_on_the_host() {
    use wgpu_rnn::{CellKind, Nonlinearity};
    let cells = [
        ("rnn.wgsl", CellKind::Rnn(Nonlinearity::Tanh)),
        ("lstm.wgsl", CellKind::Lstm),
        ("gru.wgsl", CellKind::Gru),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for (file, cell) in cells {
        let source = std::fs::read_to_string(dir.join(file)).expect("cell file")
            + &std::fs::read_to_string(dir.join("recurrent.wgsl")).expect("recurrent.wgsl");
        let module =
            naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{file}: {e}"));
        let host = [
            ("GATES", cell.gates()),
            ("SAVED", cell.gpu_saved_per_unit()),
            ("HAS_C", usize::from(cell.has_cell_state())),
            ("GRAD_PLANES", cell.gate_gradient_planes()),
        ];
        for (name, value) in host {
            assert_eq!(constant(&module, name), value, "{file}: {name}");
        }
    }
}
