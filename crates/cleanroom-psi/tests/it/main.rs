//! Two parties in one process: exact results against a plaintext computation, what crosses the
//! wire, and how sessions refuse a peer that breaks the rules.

mod exact;
mod refusals;
mod rounds;
mod wire;

use cleanroom_psi::group::Kinds;
use cleanroom_psi::{
    Action, Hello, InputBuilder, Message, Outcome, Party, ProtocolKind, Role, SessionConfig,
};

/// One party's records: an identifier per kind (or none) and a value.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub rows: Vec<(Vec<Option<String>>, i64)>,
}

impl Records {
    pub fn single(ids: &[String]) -> Self {
        Records {
            rows: ids.iter().map(|i| (vec![Some(i.clone())], 1)).collect(),
        }
    }
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct Run {
    pub protocol: ProtocolKind,
    pub kinds: Vec<&'static str>,
    pub max_value: u64,
    pub batch: u32,
    pub count_epsilon: Option<f64>,
    pub sum_epsilon: Option<f64>,
    /// OT intersection: the receiver's items per bucket.
    pub ot_bucket_items: u64,
    /// OT intersection: spill the items to sealed temporary files above this many bytes.
    pub spill_above: [Option<usize>; 2],
}

impl Run {
    pub fn new(protocol: ProtocolKind, kinds: &[&'static str]) -> Self {
        Run {
            protocol,
            kinds: kinds.to_vec(),
            max_value: 1000,
            batch: 7,
            count_epsilon: None,
            sum_epsilon: None,
            ot_bucket_items: cleanroom_psi::ot::DEFAULT_BUCKET_ITEMS,
            spill_above: [None, None],
        }
    }

    /// The OT intersection in buckets of about `per_bucket` items, each side spilling its
    /// items to disk above the given number of bytes.
    pub fn bucketed(mut self, per_bucket: u64, spill: [Option<usize>; 2]) -> Self {
        self.ot_bucket_items = per_bucket;
        self.spill_above = spill;
        self
    }
}

/// Every message either side sent, encoded as on the wire (hellos included).
#[derive(Default)]
pub struct Transcript {
    pub receiver_sent: Vec<Vec<u8>>,
    pub sender_sent: Vec<Vec<u8>>,
}

impl Transcript {
    pub fn all_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for m in self.receiver_sent.iter().chain(&self.sender_sent) {
            v.extend_from_slice(m);
        }
        v
    }
}

pub fn prepare(run: &Run, role: Role, records: &Records) -> cleanroom_psi::PreparedInput {
    let kinds = Kinds::new(&run.kinds).unwrap();
    let max = (run.protocol.values_holder() == Some(role)).then_some(run.max_value);
    let mut b = InputBuilder::new(kinds, run.protocol, role, max).unwrap();
    let side = usize::from(role == Role::Sender);
    if let Some(above) = run.spill_above[side] {
        b.spill(cleanroom_psi::SpillConfig {
            dir: std::env::temp_dir(),
            above,
        })
        .unwrap();
    }
    for (ids, v) in &records.rows {
        let slots: Vec<Option<&[u8]>> = ids
            .iter()
            .map(|i| i.as_deref().map(str::as_bytes))
            .collect();
        b.push(&slots, Some(*v)).unwrap();
    }
    b.finish().unwrap()
}

pub fn config(run: &Run, role: Role) -> SessionConfig {
    let mut c = SessionConfig::new(run.protocol, role);
    c.batch = run.batch;
    c.count_epsilon = run.count_epsilon;
    c.sum_epsilon = run.sum_epsilon;
    c.ot_bucket_items = run.ot_bucket_items;
    c
}

/// Runs a whole session in process; returns the receiver's and the sender's outcomes.
pub fn run(run: &Run, receiver: &Records, sender: &Records) -> (Outcome, Outcome, Transcript) {
    let ri = prepare(run, Role::Receiver, receiver);
    let si = prepare(run, Role::Sender, sender);
    let (rc, sc) = (config(run, Role::Receiver), config(run, Role::Sender));
    let (rh, sh) = (rc.hello(&ri), sc.hello(&si));
    let mut t = Transcript::default();
    t.receiver_sent.push(rh.encode());
    t.sender_sent.push(sh.encode());
    let rs = rc
        .agree(&rh, &Hello::decode(&sh.encode()).unwrap())
        .unwrap();
    let ss = sc
        .agree(&sh, &Hello::decode(&rh.encode()).unwrap())
        .unwrap();
    let parties = [Party::new(rs, ri).unwrap(), Party::new(ss, si).unwrap()];
    let [r, s] = drive(parties, &mut t).unwrap();
    (r, s, t)
}

/// Moves messages between two parties until both finish; every message goes through bytes.
pub fn drive(
    mut parties: [Party; 2],
    t: &mut Transcript,
) -> Result<[Outcome; 2], cleanroom_psi::PsiError> {
    let mut queues: [std::collections::VecDeque<Message>; 2] = Default::default();
    let mut finished = [false; 2];
    loop {
        let mut progress = false;
        for i in 0..2 {
            if finished[i] {
                continue;
            }
            match parties[i].next_action()? {
                Action::Send(m) => {
                    let bytes = m.encode();
                    queues[1 - i].push_back(Message::decode(&bytes)?);
                    if i == 0 {
                        t.receiver_sent.push(bytes);
                    } else {
                        t.sender_sent.push(bytes);
                    }
                    progress = true;
                }
                Action::Receive => {
                    if let Some(m) = queues[i].pop_front() {
                        parties[i].receive(m)?;
                        progress = true;
                    }
                }
                Action::Finished => {
                    finished[i] = true;
                    progress = true;
                }
            }
        }
        if finished == [true, true] {
            assert!(queues.iter().all(|q| q.is_empty()), "messages left over");
            break;
        }
        assert!(progress, "deadlock: both parties wait");
    }
    let [a, b] = parties;
    Ok([a.outcome().unwrap(), b.outcome().unwrap()])
}
