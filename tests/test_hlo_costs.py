"""XLA:TPU's per-op estimates summed by model part, on a hand-written program."""
from effdet_jax.tools import hlo_costs

PROGRAM = '''HloModule jit_train_step, is_scheduled=true

%fused_computation (param_0: bf16[8]) -> bf16[8] {
  %param_0 = bf16[8]{0} parameter(0)
  ROOT %multiply.1 = bf16[8]{0} multiply(%param_0, %param_0), metadata={op_name="jit(train_step)/jvp(EfficientDet)/backbone/blocks_3/mul"}, backend_config={"estimated_cycles":"999"}
}

ENTRY %main.7 (p.1: bf16[8]) -> bf16[8] {
  %p.1 = bf16[8]{0} parameter(0), metadata={op_name="state.params"}
  %fusion.2 = bf16[8]{0} fusion(%p.1), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(train_step)/jvp(EfficientDet)/backbone/blocks_3/mul"}, backend_config={"window_config":{"estimated_cycles":"100"}}
  %copy.3 = bf16[8]{0} copy(%fusion.2), metadata={op_name="jit(train_step)/jvp(EfficientDet)/backbone/blocks_12/mul"}, backend_config={"estimated_cycles":"50"}
  %copy.4 = bf16[8]{0} copy(%copy.3), backend_config={"estimated_cycles":"20"}
  ROOT %copy.5 = bf16[8]{0} copy(%copy.4), metadata={op_name="jit(train_step)/transpose(jvp(EfficientDet))/backbone/blocks_3/conv2d/conv_general_dilated"}, backend_config={"estimated_cycles":"30"}
}
'''


def test_ops_are_summed_by_model_part_and_direction():
  groups = hlo_costs.breakdown(PROGRAM)
  assert [(g.name, g.cycles, g.ops) for g in groups] == [
      ('forward EfficientDet/backbone/blocks_#/mul', 150, 2),
      ('backward EfficientDet/backbone/blocks_#/conv#d/conv_general_dilated', 30, 1),
      ('(unnamed)', 20, 1)]
  # The fusion is costed as one op: the 999 cycles inside it are not added.
  assert dict(groups[0].kinds) == {'fusion': 100, 'copy': 50}


def test_the_largest_parts_carry_their_share_of_the_program():
  (top,) = hlo_costs.largest_parts(PROGRAM, 1)
  assert top['part'] == 'forward EfficientDet/backbone/blocks_#/mul' and top['ops'] == 2
  assert top['fraction'] == 150 / 200
  assert top['op_kinds'] == {'fusion': 100 / 200, 'copy': 50 / 200}
