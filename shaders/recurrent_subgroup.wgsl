// Subgroup variant of recurrent.wgsl `forward_step_rows`, in modules built only for devices
// with the SUBGROUP feature (appended after a cell file and recurrent.wgsl, whose bindings,
// constants, unit_partial_sums and finish_forward it uses). The RW invocations of unit j split
// k as there; each subgroup sums its partial dot products with subgroupAdd, and invocation
// e < G·RB adds the subgroups' sums in subgroup order: one barrier instead of log2(RW) rounds of
// a tree reduction, and the same order at every launch (deterministic on a device).

var<workgroup> subgroup_sums: array<f32, GATES * RB * RW>;  // (G·RB, subgroups ≤ RW)

@compute @workgroup_size(64, 1, 1)
fn forward_step_rows_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let b0 = wg.y * RB;
    let acc = unit_partial_sums(wg.x, b0, li);
    // Rows b0 + b ≥ B hold zeros and are not reduced (B and b0 are uniform, so every
    // invocation of a subgroup takes the same branches).
    for (var g = 0u; g < GATES; g++) {
        for (var b = 0u; b < RB; b++) {
            if b0 + b < fp.batch {
                let sum = subgroupAdd(acc[g * RB + b]);
                if lane == 0u {
                    subgroup_sums[(g * RB + b) * RW + subgroup] = sum;
                }
            }
        }
    }
    workgroupBarrier();
    if li < RB && b0 + li < fp.batch {
        var unit = array<f32, 4>();
        for (var g = 0u; g < GATES; g++) {
            var total = 0.0;
            for (var s = 0u; s < subgroups; s++) {
                total += subgroup_sums[(g * RB + li) * RW + s];
            }
            unit[g] = total;
        }
        finish_forward(wg.x, b0 + li, unit);
    }
}
