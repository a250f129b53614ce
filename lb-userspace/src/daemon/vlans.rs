//! The VLAN devices of the attached interfaces, as the data path needs them: XDP runs on
//! the plain device (the trunk) and sees tagged frames, while the kernel's routes,
//! addresses and forwarding settings belong to the VLAN devices. For NAT and tunnel the
//! data path asks the FIB as if the frame came in by the VLAN device its tags name
//! (`VLAN_IN`), and a frame routed out of a VLAN device is tagged and sent on the trunk
//! (`VLAN_OUT`). One level of QinQ: an 802.1Q device on an 802.1Q or 802.1ad device on
//! an attached interface.

use std::collections::BTreeMap;

use lb_common::{IfaceInfo, VlanKey, VlanOut, IFACE_F_VLAN};

use crate::netlink::Link;

/// The 802.1Q TPID: the only one an inner (second) tag may have.
const TPID_8021Q: u16 = 0x8100;

/// A VLAN device stacked on an attached interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub index: u32,
    pub mac: [u8; 6],
    /// The frames' key in `VLAN_IN`.
    pub key: VlanKey,
    /// Its `VLAN_OUT` value.
    pub out: VlanOut,
}

impl Vlan {
    /// Returns: its `IFACES` value.
    pub fn iface(&self) -> IfaceInfo {
        IfaceInfo {
            mac: self.mac,
            flags: IFACE_F_VLAN,
            _pad: 0,
        }
    }
}

/// Returns: the VLAN devices among `links` stacked (one or two deep) on one of the
/// `attached` ifindexes, by ifindex. Deeper stacks, and a second tag that is not
/// 802.1Q, are left out: the data path parses no more.
pub fn stacked(links: &[Link], attached: &[u32]) -> BTreeMap<u32, Vlan> {
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let mut out = BTreeMap::new();
    for l in links {
        let Some(tag) = l.vlan else { continue };
        let Some(parent) = l.parent.and_then(|p| by_index.get(&p)) else {
            continue;
        };
        // Outermost first.
        let (root, tags) = match parent.vlan {
            None => (parent.index, vec![tag]),
            Some(outer) if tag.0 == TPID_8021Q => match parent.parent {
                Some(root) if by_index.get(&root).is_some_and(|r| r.vlan.is_none()) => {
                    (root, vec![outer, tag])
                }
                _ => continue,
            },
            Some(_) => continue,
        };
        if !attached.contains(&root) {
            continue;
        }
        let mut v = VlanOut {
            xmit_ifindex: root,
            tags: tags.len() as u8,
            ..VlanOut::default()
        };
        for (i, (tpid, vid)) in tags.iter().enumerate() {
            v.tpid_be[i] = tpid.to_be();
            v.vid_be[i] = (vid & 0x0fff).to_be();
        }
        out.insert(
            l.index,
            Vlan {
                index: l.index,
                mac: l.mac,
                key: VlanKey {
                    ifindex: root,
                    vid_be: v.vid_be,
                },
                out: v,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, parent: Option<u32>, vlan: Option<(u16, u16)>) -> Link {
        Link {
            index,
            parent,
            mac: [2, 0, 0, 0, 0, index as u8],
            vlan,
        }
    }

    #[test]
    fn single_and_double_tags_of_attached_interfaces_only() {
        let links = [
            link(1, None, None),                     // lo
            link(2, None, None),                     // trunk, attached
            link(3, None, None),                     // not attached
            link(10, Some(2), Some((0x8100, 100))),  // trunk.100
            link(11, Some(2), Some((0x88a8, 300))),  // trunk.300 (S-tag)
            link(12, Some(11), Some((0x8100, 200))), // trunk.300.200
            link(13, Some(3), Some((0x8100, 100))),  // other.100
            link(14, Some(12), Some((0x8100, 7))),   // three deep
            link(15, Some(11), Some((0x88a8, 8))),   // inner S-tag
            link(16, Some(2), None),                 // a macvlan
        ];
        let got = stacked(&links, &[2]);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![10, 11, 12]);
        let v = &got[&10];
        assert_eq!(
            v.key,
            VlanKey {
                ifindex: 2,
                vid_be: [100u16.to_be(), 0]
            }
        );
        assert_eq!(v.out.tags, 1);
        assert_eq!(v.out.xmit_ifindex, 2);
        assert_eq!(v.out.tpid_be, [0x8100u16.to_be(), 0]);
        let q = &got[&12];
        assert_eq!(
            q.key,
            VlanKey {
                ifindex: 2,
                vid_be: [300u16.to_be(), 200u16.to_be()]
            }
        );
        assert_eq!(q.out.tags, 2);
        assert_eq!(q.out.tpid_be, [0x88a8u16.to_be(), 0x8100u16.to_be()]);
        assert_eq!(q.out.vid_be, [300u16.to_be(), 200u16.to_be()]);
        assert_eq!(q.iface().flags, IFACE_F_VLAN);
        assert_eq!(q.iface().mac, [2, 0, 0, 0, 0, 12]);
    }
}
