"""The planner services aiplane ships for agent steps: a scripted planner (declarative rules) and a retrieval planner
(embedding similarity between the goal and the actions' descriptions), both BentoML services that speak the planner
contract of ``crds.planner`` (docs/planners.md)."""
