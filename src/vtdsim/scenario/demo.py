"""The demo's scenario: the seed's story, told by ``vtdsim demo``.

The text is the same as ``examples/seed_aux_two_vms.toml`` (a test keeps them identical), kept
here so the installed package can tell the story without the source tree.
"""

from __future__ import annotations

__all__ = ["DEMO_SOURCE", "DEMO_TOML", "PREFACE"]

DEMO_SOURCE = "examples/seed_aux_two_vms.toml"

PREFACE = """\
What this shows
An IOMMU sits between PCI devices and memory. Every DMA a device issues carries the device's
PCI address (bus:device.function) and, optionally, a PASID, and the IOMMU translates the
address the device used through tables in memory that the operating system wrote: root table
(by bus), context table (by device), PASID directory and PASID table (by PASID), then the page
table of the domain the PASID belongs to. A DMA the tables do not allow is blocked, and the
IOMMU records a fault with a reason code.

In 2019 Linux gained "auxiliary domains" so that one device could be split into mediated
devices handed to different virtual machines, each isolated by its own domain and PASID. This
is that story, run on vtdsim's bit-exact model of the hardware and of the Linux driver.
"""

DEMO_TOML = '''# The seed's story (Lu Baolu, "[PATCH v5 4/8] iommu/vt-d: Aux-domain specific domain
# attach/detach", reviewed by Jonathan Cameron, January 2019): one PCI device shared by two
# virtual machines through two mediated devices, isolated by the IOMMU with one auxiliary
# domain and one PASID per VM.  `vtdsim demo` tells this file's story.

title = "Two mediated devices on one parent, each assigned to its own VM"
description = """
A PASID-capable device at 00:02.0 is split into two mediated devices. Each belongs to a
different virtual machine. The IOMMU keeps them apart: every DMA of a mediated device carries
the PASID of its VM's auxiliary domain, and each PASID has its own page table."""

[platform]
memory = "256M"

[[platform.units]]
name = "dmar0"

[[platform.devices]]
name = "parent"
bdf = "00:02.0"
pasid_bits = 20

[kernel]
aux_variant = "corrected"

# --- 1 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """1. Let the parent device host mediated devices
At boot Linux pointed the IOMMU's root and context tables at the parent device. Before the
device can be shared, its driver asks for the "aux" feature (IOMMU_DEV_FEAT_AUX): the IOMMU
must now accept DMA tagged with a PASID (Process Address Space ID) from this device."""
op = "dev_enable_feature"
device = "parent"
feature = "aux"
note = "sets PASIDE in the parent's context entry and enables PCI PASID"

# --- 2 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """2. One auxiliary domain per virtual machine
A domain is an I/O address space: a page table that the IOMMU walks to turn the addresses a
device uses into physical memory addresses. VM 1's guest memory starts at host physical
0x400000 and VM 2's at 0x800000 (guest-physical 0 is the start). Both VMs use guest-physical
0x100000: each domain maps it to its own VM's memory, host 0x500000 for VM 1 and host 0x900000
for VM 2."""
op = "domain_alloc"
as = "vm1"
note = "VM 1's domain"

[[steps]]
op = "domain_alloc"
as = "vm2"
note = "VM 2's domain"

[[steps]]
op = "map"
domain = "vm1"
iova = 0x100000
paddr = 0x500000
size = "64K"
note = "VM 1: guest-physical 0x100000 -> host 0x500000"

[[steps]]
op = "map"
domain = "vm2"
iova = 0x100000
paddr = 0x900000
size = "64K"
note = "VM 2: guest-physical 0x100000 -> host 0x900000"

# --- 3 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """3. Attach each domain to the parent as an auxiliary domain
iommu_aux_attach_device() gives each domain a PASID and writes a PASID-table entry for the
parent pointing at the domain's page table. The mediated device of each VM tags its DMA with
that PASID (iommu_aux_get_pasid)."""
op = "aux_attach_device"
domain = "vm1"
device = "parent"

[[steps]]
op = "aux_get_pasid"
domain = "vm1"
device = "parent"
as = "pasid1"
expect = { ret = 1 }
note = "mediated device 1 (VM 1) will use PASID 1"

[[steps]]
op = "aux_attach_device"
domain = "vm2"
device = "parent"

[[steps]]
op = "aux_get_pasid"
domain = "vm2"
device = "parent"
as = "pasid2"
expect = { ret = 2 }
note = "mediated device 2 (VM 2) will use PASID 2"

# --- 4 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """4. DMA lands in the right VM's memory
Both mediated devices write to the same guest-physical address, 0x100000. The IOMMU looks up
each request's PASID and walks that VM's page table, so each write lands in its own VM."""
op = "dma_write"
device = "parent"
pasid = "$pasid1"
addr = 0x100000
text = "hello from mdev 1"
note = "mediated device 1 writes to guest-physical 0x100000"

[[steps]]
op = "dma_write"
device = "parent"
pasid = "$pasid2"
addr = 0x100000
text = "hello from mdev 2"
note = "mediated device 2 writes to the same guest-physical address"

[[steps]]
op = "mem_read"
addr = 0x500000
length = 17
expect = { text = "hello from mdev 1" }
note = "VM 1's memory holds mediated device 1's data"

[[steps]]
op = "mem_read"
addr = 0x900000
length = 17
expect = { text = "hello from mdev 2" }
note = "VM 2's memory holds mediated device 2's data"

[[steps]]
op = "dma_read"
device = "parent"
pasid = "$pasid2"
addr = 0x100000
length = 17
expect = { text = "hello from mdev 2" }
note = "mediated device 2 reads back its own VM's data, never VM 1's"

# --- 5 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """5. A stray DMA is blocked
Mediated device 1 tries an address its VM never mapped (guest-physical 0x200000). The walk of
VM 1's page table finds no entry: the IOMMU blocks the DMA and records a fault with its reason.
A PASID that no domain was given is blocked one step earlier, at the PASID table."""
op = "dma_read"
device = "parent"
pasid = "$pasid1"
addr = 0x200000
length = 8
walk = true
expect = { fault = "SS_PAGING_ENTRY_RW" }
note = "no second-level entry for 0x200000 in VM 1's page table"

[[steps]]
op = "dma_read"
device = "parent"
pasid = 3
addr = 0x100000
length = 8
expect = { fault = "PASID_ENTRY_P" }
note = "PASID 3 belongs to nobody"

# --- 6 ---------------------------------------------------------------------------------------
[[steps]]
chapter = """6. VM 2 goes away: detach, and the fault after it
iommu_aux_detach_device() tears down the PASID-table entry (then invalidates the PASID cache
and the IOTLB) and releases PASID 2. A DMA still tagged with PASID 2 now faults, while VM 1
keeps working."""
op = "aux_detach_device"
domain = "vm2"
device = "parent"

[[steps]]
op = "dma_read"
device = "parent"
pasid = "$pasid2"
addr = 0x100000
length = 8
walk = true
expect = { fault = "PASID_ENTRY_P" }
note = "PASID 2's entry is gone"

[[steps]]
op = "dma_read"
device = "parent"
pasid = "$pasid1"
addr = 0x100000
length = 17
expect = { text = "hello from mdev 1" }
note = "VM 1 is unaffected"
'''
