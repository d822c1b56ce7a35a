"""The NVML layer against a stand-in as strict as the real library: what the stand-in refuses, the sensor's reads,
and which GPUs a run meters (CUDA's numbering, CUDA_VISIBLE_DEVICES, selections, lost GPUs, MIG), plus the
registry through which sensor kinds join discovery."""
import ast, re, threading, time
from pathlib import Path

import pynvml
import pytest
from hypothesis import given, settings, strategies as st

from energytok.cli import main
from energytok.nvml import FakeNVML, NVMLSensor, gpu_sensors, nvml_statuses, select_gpus
from energytok.sensors import SENSOR_KINDS, SensorError, SensorStatus, Trace, available_sensors, register_sensor_kind, sensor_kinds

PKG = Path(__file__).parents[1] / 'energytok'
NO_RAPL = '/nonexistent/powercap'


def opened(fake, i=0):
    fake.nvmlInit()
    return fake.nvmlDeviceGetHandleByIndex(i)


# ---- the stand-in is as strict as nvidia-ml-py ---------------------------------------------------------------------
def test_every_nvml_function_energytok_calls_exists_in_pynvml_and_the_stand_in():
    "The stand-in has each function the NVML layer calls, and each of those is nvidia-ml-py's."
    called = set(re.findall(r'\bnv\.(nvml\w+)', (PKG / 'nvml.py').read_text()))
    assert {'nvmlDeviceGetTotalEnergyConsumption', 'nvmlDeviceGetFieldValues', 'nvmlDeviceGetPciInfo'} <= called
    assert not [f for f in called if not hasattr(pynvml, f)], 'calls a function nvidia-ml-py does not have'
    assert not [f for f in called if not hasattr(FakeNVML, f)], 'calls a function the stand-in does not have'
    fake_fns = {f for f in dir(FakeNVML) if f.startswith('nvml')}
    assert not [f for f in fake_fns if not hasattr(pynvml, f)], 'the stand-in has a function nvidia-ml-py does not'


def test_nothing_answers_before_nvml_init_or_after_the_last_shutdown():
    fake = FakeNVML([dict()])
    with pytest.raises(pynvml.NVMLError_Uninitialized): fake.nvmlDeviceGetCount()
    fake.nvmlInit(); fake.nvmlInit()
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetCount() == 1  # one init still open
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized): fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_Uninitialized): fake.nvmlShutdown()


def test_index_out_of_range_is_an_invalid_argument_and_uuid_not_found():
    fake = FakeNVML([dict(), dict()]); fake.nvmlInit()
    for bad in (2, -1, True):
        with pytest.raises(pynvml.NVMLError_InvalidArgument): fake.nvmlDeviceGetHandleByIndex(bad)
    with pytest.raises(pynvml.NVMLError_NotFound): fake.nvmlDeviceGetHandleByUUID('GPU-nope')


def test_mig_mode_not_supported_off_and_on():
    fake = FakeNVML([dict(), dict(mig=[]), dict(mig=['MIG-a', dict(uuid='MIG-b', gi=5, ci=1)])]); fake.nvmlInit()
    h = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
    with pytest.raises(pynvml.NVMLError_NotSupported): fake.nvmlDeviceGetMigMode(h[0])
    assert fake.nvmlDeviceGetMigMode(h[1]) == [0, 0] and fake.nvmlDeviceGetMigMode(h[2]) == [1, 1]
    assert fake.nvmlDeviceGetMaxMigDeviceCount(h[2]) == 7
    with pytest.raises(pynvml.NVMLError_NotFound): fake.nvmlDeviceGetMigDeviceHandleByIndex(h[2], 2)  # an empty slot
    mh = fake.nvmlDeviceGetMigDeviceHandleByIndex(h[2], 1)
    assert (fake.nvmlDeviceGetUUID(mh), fake.nvmlDeviceGetGpuInstanceId(mh), fake.nvmlDeviceGetComputeInstanceId(mh)) == ('MIG-b', 5, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported): fake.nvmlDeviceGetTotalEnergyConsumption(mh)
    with pytest.raises(pynvml.NVMLError_InvalidArgument): fake.nvmlDeviceGetGpuInstanceId(h[2])


def test_unknown_device_keys_are_refused():
    with pytest.raises(ValueError, match=r"devices\[0\]: unknown keys \['powr_w'\]"): FakeNVML([dict(powr_w=1.0)])
    with pytest.raises(ValueError, match='pci_bus_id'): FakeNVML([dict(pci_bus_id='18:00')])
    with pytest.raises(ValueError, match='call_latency_s'): FakeNVML([dict()], call_latency_s=-1)


def test_scope_id_is_honoured_as_nvidia_ml_py_sends_it():
    fake = FakeNVML([dict(power_w=200.0), dict(power_w=200.0, module_extra_w=90.0, memory_w=35.0)])
    fid = pynvml.NVML_FI_DEV_POWER_INSTANT
    plain, module, memory = fake.nvmlDeviceGetFieldValues(opened(fake, 0), [fid, (fid, pynvml.NVML_POWER_SCOPE_MODULE), (fid, pynvml.NVML_POWER_SCOPE_MEMORY)])
    assert (plain.fieldId, plain.scopeId, plain.nvmlReturn, plain.value.uiVal) == (fid, 0, pynvml.NVML_SUCCESS, 200_000)
    assert (module.fieldId, module.scopeId, module.nvmlReturn) == (fid, 1, pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert memory.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    gh = fake.nvmlDeviceGetHandleByIndex(1)
    _, module, memory = fake.nvmlDeviceGetFieldValues(gh, [fid, (fid, 1), (fid, 2)])
    assert (module.value.uiVal, memory.value.uiVal) == (290_000, 35_000)
    with pytest.raises(ValueError): fake.nvmlDeviceGetFieldValues(gh, [(fid, 1, 2)])  # as ctypes unpacking refuses it


def test_power_usage_is_a_one_second_mean_and_the_instant_field_is_not():
    step = Trace([0.0, 0.9, 0.90001, 30.0], [100.0, 100.0, 500.0, 500.0])
    fake = FakeNVML([dict(trace=step)])
    h = opened(fake)
    time.sleep(1.3)
    inst = fake.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0].value.uiVal / 1e3
    avg = fake.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_AVERAGE])[0].value.uiVal / 1e3
    usage = fake.nvmlDeviceGetPowerUsage(h) / 1e3
    rel = fake._rel_s()
    expected = 100.0 * (1.0 - (rel - 0.9)) + 500.0 * (rel - 0.9)  # the last second: 100 W before the step, 500 W after
    assert inst == 500.0
    assert usage == pytest.approx(expected, abs=15) and avg == pytest.approx(expected, abs=15) and usage < 400


def test_counter_starts_near_1e11_mj_and_steps():
    fake = FakeNVML([dict(power_w=400.0), dict(power_w=400.0)])
    h = opened(fake)
    first = fake.nvmlDeviceGetTotalEnergyConsumption(h)
    assert 10**11 <= first < 10**11 + 10**6
    assert fake.nvmlDeviceGetTotalEnergyConsumption(fake.nvmlDeviceGetHandleByIndex(1)) >= 10**11 + 10**9
    seen, t_end = [], time.monotonic() + 0.55
    while time.monotonic() < t_end: seen.append(fake.nvmlDeviceGetTotalEnergyConsumption(h))
    steps = sorted(set(seen))
    assert 5 <= len(steps) <= 7  # 100 ms refreshes over 0.55 s
    assert all(b - a == pytest.approx(40_000, abs=50) for a, b in zip(steps[1:], steps[2:]))  # 400 W x 0.1 s, in mJ


def test_calls_take_their_latency_and_are_serialised():
    fake = FakeNVML([dict()], call_latency_s=0.02)
    h = opened(fake)
    def reads(): [fake.nvmlDeviceGetPowerUsage(h) for _ in range(5)]
    threads = [threading.Thread(target=reads) for _ in range(2)]
    t = time.monotonic()
    for th in threads: th.start()
    for th in threads: th.join()
    assert time.monotonic() - t >= 10 * 0.02 * 0.95  # ten calls, one at a time
    spans = [(a, b) for name, a, b in fake.call_log if name == 'nvmlDeviceGetPowerUsage']
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(sorted(spans), sorted(spans)[1:]))  # no two calls overlap


def test_errors_are_nvidia_ml_pys_own_classes():
    fake = FakeNVML([dict(error=pynvml.NVML_ERROR_NO_PERMISSION)]); fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NoPermission): fake.nvmlDeviceGetHandleByIndex(0)
    fake.lose_gpu(0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost): fake.nvmlDeviceGetHandleByIndex(0)


# ---- the sensor ------------------------------------------------------------------------------------------------------
def test_reading_time_lies_between_the_two_nvml_calls():
    fake = FakeNVML([dict()], call_latency_s=0.03)
    s = NVMLSensor(fake, opened(fake))
    r = s.read()
    (n0, c0, c1), (n1, p0, p1) = list(fake.call_log)[-2:]
    assert (n0, n1) == ('nvmlDeviceGetTotalEnergyConsumption', 'nvmlDeviceGetFieldValues')
    assert c1 <= r.t_s <= p0 and p1 - c0 >= 0.06


def test_power_errors_are_labelled_power_and_counter_errors_energy():
    fake = FakeNVML([dict(power_fields={pynvml.NVML_FI_DEV_POWER_INSTANT})])
    s = NVMLSensor(fake, opened(fake), 'gpu:3')
    fake.devices[0]['power_fields'] = False
    with pytest.raises(SensorError, match=r"^gpu:3 \(NVIDIA H100 80GB HBM3\): power: NVML power field 'instant' stopped answering"): s.read()
    fake.devices[0]['power_fields'] = True
    fake.devices[0]['counter_start_mj'] = 0
    with pytest.raises(SensorError, match=r'^gpu:3 .*: energy counter: counter fell .*reset'): s.read()


@pytest.mark.parametrize('value_type, expected', [(0, 'instant'), (1, 'instant'), (3, 'instant'), (7, 'usage'), (42, 'usage')])
def test_field_value_types(value_type, expected):
    "Every known value type is read; an unknown one counts as an absent field, not a KeyError."
    fake = FakeNVML([dict(power_w=123.0, value_type=value_type)])
    s = NVMLSensor(fake, opened(fake))
    assert s.power_field == expected and s.read().power_w == pytest.approx(123.0)


def test_a_value_type_changing_mid_run_is_a_power_error():
    fake = FakeNVML([dict(power_w=123.0)])
    s = NVMLSensor(fake, opened(fake))
    fake.devices[0]['value_type'] = 11
    with pytest.raises(SensorError, match=r'power: NVML field 186 came back with value type 11'): s.read()


# ---- which GPUs a run meters -----------------------------------------------------------------------------------------
def node(names=('NVIDIA H200',) * 4, buses=(0x18, 0x2a, 0x3a, 0x5d), **kw):
    return FakeNVML([dict(name=n, uuid=f'GPU-{i:02d}aa', pci_bus_id=f'00000000:{b:02X}:00.0', speed=2.0 if 'H' in n else 1.0, **kw)
                     for i, (n, b) in enumerate(zip(names, buses))])


@settings(max_examples=40, deadline=None)
@given(st.permutations([0x18, 0x2a, 0x3a, 0x5d]), st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
       st.booleans(), st.booleans())
def test_mapping_agrees_with_cuda_for_reordered_buses_and_visible_devices(buses, visible, pci_order, by_uuid):
    "Same model on every GPU: the GPUs metered are the ones CUDA numbers, in CUDA's order, whatever NVML's order."
    fake = node(buses=buses)
    base = {'CUDA_DEVICE_ORDER': 'PCI_BUS_ID'} if pci_order else {}
    uuids_by_bus = fake.cuda_device_uuids(base)
    entries = [uuids_by_bus[k] if by_uuid else str(k) for k in visible]
    env = {**base, 'CUDA_VISIBLE_DEVICES': ','.join(entries)}
    sel = gpu_sensors(nvml=fake, env=env)
    assert [s.uuid for s in sel.sensors] == fake.cuda_device_uuids(env)
    assert [s.domain for s in sel.sensors] == [f'gpu:{k}' for k in range(len(visible))]


def test_four_gpus_reordered_only_the_chosen_are_metered_the_others_listed():
    fake = node(buses=(0x5d, 0x18, 0x3a, 0x2a))  # NVML's index order is not the bus order
    env = {'CUDA_VISIBLE_DEVICES': '3,0,2'}  # CUDA positions: the bus order 01, 03, 02, 00
    assert fake.cuda_device_uuids(env) == ['GPU-00aa', 'GPU-01aa', 'GPU-02aa']
    sel = gpu_sensors(['cuda:2', 'cuda:0'], nvml=fake, env=env)
    assert [(s.domain, s.uuid, s.nvml_index) for s in sel.sensors] == [('gpu:2', 'GPU-02aa', 2), ('gpu:0', 'GPU-00aa', 0)]
    assert sel.metered_devices == [
        dict(index=2, nvml_index=2, uuid='GPU-02aa', name='NVIDIA H200', power_limit_w=700.0, pci_bus_id='00000000:3A:00.0', mig_instances=[]),
        dict(index=0, nvml_index=0, uuid='GPU-00aa', name='NVIDIA H200', power_limit_w=700.0, pci_bus_id='00000000:5D:00.0', mig_instances=[])]
    assert sel.unmetered_devices == [dict(index=1, nvml_index=1, uuid='GPU-01aa', name='NVIDIA H200', power_limit_w=700.0,
                                          pci_bus_id='00000000:18:00.0')]
    statuses = nvml_statuses(fake, env=env, gpus='cuda:2,cuda:0')
    assert [(s.domain, s.present, s.selected) for s in statuses] == [('gpu:2', True, True), ('gpu:0', True, True), ('gpu:1', False, False)]
    assert 'visible, not metered' in statuses[2].reason


def test_mixed_models_are_not_guessed():
    fake = node(names=('NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3'))
    for env in ({}, {'CUDA_VISIBLE_DEVICES': '0,1'}):
        st_ = nvml_statuses(fake, env=env)
        assert [s.present for s in st_] == [False] and 'fastest first' in st_[0].reason and 'CUDA_DEVICE_ORDER=PCI_BUS_ID' in st_[0].reason
    env = {'CUDA_VISIBLE_DEVICES': 'GPU-02aa,GPU-01aa'}  # UUIDs need no order
    assert [s.uuid for s in gpu_sensors(nvml=fake, env=env).sensors] == ['GPU-02aa', 'GPU-01aa']
    env = {'CUDA_VISIBLE_DEVICES': '0,1'}
    sel = gpu_sensors(nvml=fake, env=env, cuda_uuids=lambda: fake.cuda_device_uuids(env))
    assert [s.uuid for s in sel.sensors] == ['GPU-01aa', 'GPU-03aa'] == fake.cuda_device_uuids(env)
    assert "CUDA ordinals from CUDA's own device list" in sel.notes
    env = {'CUDA_DEVICE_ORDER': 'PCI_BUS_ID', 'CUDA_VISIBLE_DEVICES': '0,1'}
    assert [s.uuid for s in gpu_sensors(nvml=fake, env=env).sensors] == fake.cuda_device_uuids(env) == ['GPU-00aa', 'GPU-01aa']


def test_cuda_list_that_differs_from_the_worked_out_mapping_wins_and_is_noted():
    fake = node()
    sel = gpu_sensors(nvml=fake, env={}, cuda_uuids=['GPU-03aa', 'GPU-00aa'])
    assert [s.uuid for s in sel.sensors] == ['GPU-03aa', 'GPU-00aa']
    assert any('differs' in n for n in sel.notes)
    sel = gpu_sensors(nvml=fake, env={}, cuda_uuids=['03aa', 'GPU-99zz'])  # torch's form has no 'GPU-' prefix
    assert [s.uuid for s in sel.sensors] == ['GPU-03aa'] and 'NVML does not list' in sel.statuses[-1].reason


@pytest.mark.parametrize('how', ['lost', 'no-permission', 'uuid'])
def test_one_gpu_that_cannot_be_opened_is_reported_and_the_others_metered(how, monkeypatch):
    fake = node()
    if how == 'lost': fake.lose_gpu(2)
    elif how == 'no-permission': fake.devices[2]['error'] = pynvml.NVML_ERROR_NO_PERMISSION
    else:
        real = FakeNVML.nvmlDeviceGetUUID
        def uuid(self, h):
            if h.index == 2 and h.mig is None: raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return real(self, h)
        monkeypatch.setattr(FakeNVML, 'nvmlDeviceGetUUID', uuid)
    st_ = nvml_statuses(fake, env={})
    assert [(s.domain, s.present) for s in st_] == [('gpu:0', True), ('gpu:1', True), ('gpu:2', False), ('gpu:3', True)]
    assert st_[2].reason.startswith('NVML cannot open GPU 2: NVMLError_')
    assert [s.domain for s in available_sensors(nvml=fake, env={}, rapl_root=NO_RAPL, estimate=False)] == ['gpu:0', 'gpu:1', 'gpu:3']


def test_legacy_mig_form_resolves_to_its_instance():
    fake = FakeNVML([dict(uuid='GPU-5e1f-77'), dict(name='NVIDIA A100-SXM4-80GB', uuid='GPU-9c2d-11',
                                                     mig=[dict(uuid='MIG-aa', gi=1, ci=0), dict(uuid='MIG-bb', gi=2, ci=0)])])
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-GPU-9c2d-11/2/0'})
    assert not st_[0].present and 'MIG instance MIG-bb (GPU instance 2, compute instance 0)' in st_[0].reason
    sel = gpu_sensors(nvml=fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-GPU-9c2d-11/2/0,MIG-aa'}, mig_parent=True)
    assert [(s.domain, s.uuid, s.mig) for s in sel.sensors] == [('gpu:0', 'GPU-9c2d-11', ['MIG-bb', 'MIG-aa'])]
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': 'MIG-GPU-9c2d-11/3/0,0'})  # no such instance: CUDA stops there
    assert [s.present for s in st_] == [False] and 'matches no device' in st_[0].reason


@pytest.mark.parametrize('visible', ['1,2,1', 'GPU-01,GPU-02aa,GPU-01a'])
def test_a_gpu_named_twice_hides_every_gpu(visible):
    "As PyTorch's parser of CUDA_VISIBLE_DEVICES has it (and the stand-in's model of CUDA): a repeated GPU empties the list."
    fake = node()
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': visible})
    assert [s.present for s in st_] == [False] and 'names a GPU twice' in st_[0].reason
    assert fake.cuda_device_uuids({'CUDA_VISIBLE_DEVICES': visible}) == []


@pytest.mark.parametrize('visible, expected', [('1,GPU-00aa', ['GPU-01aa']), ('GPU-02aa,0', ['GPU-02aa'])])
def test_the_first_entrys_form_holds_for_the_list(visible, expected):
    fake = node()
    st_ = nvml_statuses(fake, env={'CUDA_VISIBLE_DEVICES': visible})
    assert [s.sensor.uuid for s in st_ if s.present] == expected == fake.cuda_device_uuids({'CUDA_VISIBLE_DEVICES': visible})
    assert "not of the first entry's form" in st_[-1].reason


def test_a_cuda_list_matching_no_nvml_uuid_is_not_used():
    sel = gpu_sensors(nvml=node(), env={'CUDA_VISIBLE_DEVICES': '2'}, cuda_uuids=['deadbeef-0000'])
    assert [s.uuid for s in sel.sensors] == ['GPU-02aa'] and any('match none of NVML' in n for n in sel.notes)


@pytest.mark.parametrize('gpus, expected', [(None, [0, 1, 2, 3]), ('all', [0, 1, 2, 3]), (2, [2]), ('cuda:1', [1]), ('cuda', [0]),
                                            ('3, 1', [3, 1]), (['cuda:0', 2], [0, 2]), ('GPU-02', [2]), (range(1, 3), [1, 2])])
def test_select_gpus(gpus, expected):
    assert select_gpus(gpus, 4, ['GPU-00aa', 'GPU-01aa', 'GPU-02aa', 'GPU-03aa']) == expected


@pytest.mark.parametrize('gpus, err, match', [
    ('cuda:4', ValueError, r"gpus: 'cuda:4' is not a visible GPU; 4 visible \(cuda:0 to cuda:3\)"),
    (-1, ValueError, 'not a visible GPU'), ('cpu', ValueError, "expected CUDA ordinals, 'cuda:N'"),
    ([0, 'cuda:0'], ValueError, 'more than once'), ([], ValueError, 'at least one GPU'), ('GPU-0', ValueError, 'matches several'),
    (True, TypeError, 'gpus: expected'), (1.0, TypeError, r'got 1\.0 \(float\)'),
])
def test_select_gpus_refuses_bad_input(gpus, err, match):
    with pytest.raises(err, match=match): select_gpus(gpus, 4, ['GPU-00aa', 'GPU-01aa', 'GPU-02aa', 'GPU-03aa'])


def test_selection_through_available_sensors_and_the_cli(capsys, monkeypatch):
    fake = node()
    found = available_sensors(gpus='cuda:1', nvml=fake, env={}, rapl_root=NO_RAPL)
    assert [(s.domain, s.uuid) for s in found] == [('gpu:1', 'GPU-01aa')]
    import energytok.nvml as nvml_mod
    monkeypatch.setitem(SENSOR_KINDS, 'nvml', lambda gpus=None: nvml_mod.nvml_statuses(fake, env={}, gpus=gpus))
    assert main(['sensors', '--gpus', '0,3']) == 0
    out = capsys.readouterr().out
    assert re.search(r'gpu:0 +measured', out) and re.search(r'gpu:1 +not metered', out) and re.search(r'gpu:3 +measured', out)


# ---- the registry ------------------------------------------------------------------------------------------------------
def test_sensors_module_imports_no_sensor_kind():
    "Dependencies point one way: the kinds import sensors.py, never the reverse."
    tree = ast.parse((PKG / 'sensors.py').read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
           {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and re.search(r'(^|\.)(nvml|rapl|nvml_fake)$', m)}


def test_builtin_kinds_come_first_and_options_go_to_the_kind_that_takes_them(tmp_path):
    assert list(sensor_kinds())[:2] == ['nvml', 'rapl']
    seen = {}
    def probe_statuses(probe_option=None):
        seen['probe_option'] = probe_option
        return [SensorStatus('probe', 'probe:0', False, reason='a probe')]
    register_sensor_kind('probe', probe_statuses)
    try:
        found = available_sensors(nvml=FakeNVML([dict()]), env={}, rapl_root=tmp_path / 'none', probe_option=7, estimate=False)
        assert [s.domain for s in found] == ['gpu:0'] and seen == {'probe_option': 7}
        with pytest.raises(TypeError, match=r"\['rapl_rot'\] are not options of any sensor kind"): available_sensors(rapl_rot=tmp_path)
    finally: SENSOR_KINDS.pop('probe')
    with pytest.raises(TypeError, match='statuses'): register_sensor_kind('x', 'not a function')
    with pytest.raises(ValueError, match='kind'): register_sensor_kind('', probe_statuses)
