"""The Model operator: BentoML serving Deployments, Services, autoscalers and disruption budgets per Model, and
canary rollouts that move traffic step by step and roll back on their own."""
